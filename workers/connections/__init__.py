"""How producers and workers reach Redis and the broker: the one Redis setting (plain or Sentinel),
the one builder of Redis clients, the broker URL and the RabbitMQ queue's declaration, and the
OS-level socket check the connection pools use.

Shared by both sides like :mod:`workers.contract` (producers may import it), but not part of the
wire contract: these modules talk to sockets and to redis-py. Import the submodules directly
(``workers.connections.redisclient``); the package itself imports nothing, so a producer that only
validates settings never loads redis-py.
"""
