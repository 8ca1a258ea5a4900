"""A socket's zero-timeout readiness check on the OS's own ``poll``, even in a gevent worker.

Connection pools check an idle connection before handing it out (a server that closed a pooled
socket makes it read as "readable"): httpcore's pool checks every idle HTTP connection on each
request and each response close, redis-py each connection it lends. Under gevent, ``select.poll``
is patched and each check becomes an event-loop round (watchers, a timeout, a greenlet switch):
tens of µs, which a streaming worker paid dozens of times per job (py-spy: ~4 % of its CPU for
the HTTP pools, ~3 % for Redis). A zero-timeout ``poll`` never blocks, so the unpatched one is
safe in every pool. Used by ``workers/llm/httpclient.py`` and :mod:`workers.connections.redisclient`.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable

__all__ = ["Probe", "native_probe"]

#: ``sock -> True`` when it has something to read (data, or the peer's close).
Probe = Callable[[socket.socket], bool]


def native_probe() -> Probe | None:
    """The check on the OS's ``poll``; None where the platform has no ``poll`` (keep the library's)."""
    poll = getattr(select, "poll", None)
    try:
        from gevent import monkey

        if monkey.is_module_patched("select"):
            poll = monkey.get_original("select", "poll")
    except ImportError:  # pragma: no cover - gevent is a dependency
        pass
    if poll is None:  # pragma: no cover - no poll on this platform
        return None
    pollin = select.POLLIN

    def readable(sock: socket.socket) -> bool:
        fd = sock.fileno()
        if fd < 0:
            return True
        p = poll()
        p.register(fd, pollin)
        return bool(p.poll(0))

    return readable
