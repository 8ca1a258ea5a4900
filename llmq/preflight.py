"""Before a command starts: Redis answers, the job queue's broker answers; and the one line a command
prints when either does not (the URL with its password masked, the cause, the setting to fix).

Each failure an operator meets on a first start gets its own sentence, because the fix differs:
nothing listening or nothing answering (start it, or fix the URL), a login refused (the password in
the URL), a Redis database number the server does not have, a port where something else than Redis
listens (redis-py reports a protocol error), and on RabbitMQ a refused login or a missing vhost.
:func:`explain` maps an exception to that line, or ``None`` when it is none of these (a bug: the
traceback is the right output then).
"""

from __future__ import annotations

import redis
from kombu.exceptions import OperationalError

from workers.connections.oom import OOM_TEXT
from workers.contract.redaction import shown_url

__all__ = ["Unusable", "broker_line", "check_broker", "explain", "ping_redis", "probe_not_redis", "redis_line", "shown"]

#: RabbitMQ reply codes (AMQP 0-9-1) whose fix is not "start it".
_AMQP_ACCESS_REFUSED = 403
_AMQP_NOT_ALLOWED = 530  # e.g. the vhost does not exist, or the user has no permission on it


#: A URL fit for a terminal: its password masked (the workers' scrubber's, one rule for both).
shown = shown_url


def _reason(exc: BaseException) -> str:
    """An exception's first line, without the client reprs redis-py appends (`` : <redis.client...>``)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(" : <", 1)[0]


class Unusable(Exception):
    """A failure already turned into its one line (``str(exc)``)."""


def redis_line(exc: BaseException, url: str, setting: str = "LLMQ_REDIS_URL") -> str:
    """The one line for a Redis client error at ``url`` (any of redis-py's), naming what to do;
    ``setting``: where that URL comes from."""
    where, why = shown(url), _reason(exc)
    if why.startswith(("NOAUTH", "HELLO must be called with the client already authenticated")):
        why = "it requires a password"  # redis-py's NOAUTH text is a paragraph about HELLO
    if isinstance(exc, redis.AuthenticationError) or why.startswith("WRONGPASS") or why == "it requires a password":
        return (
            f"llmq: Redis at {where} refused the login ({why}); put its password in {setting} "
            "(redis://[user]:PASSWORD@host:6379/0; under Sentinel, LLMQ_REDIS_PASSWORD)"
        )
    if isinstance(exc, redis.TimeoutError) and why.startswith("Timeout reading"):
        return (
            f"llmq: what listens at {where} took the connection but did not answer PING ({why}); it is not "
            f"a Redis that works: check the host and port in {setting} (Redis listens on 6379 by default)"
        )
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return (
            f"llmq: cannot reach Redis at {where} ({why}); start Redis (redis-server, or ./dev llmq redis) "
            f"or point {setting} at a running one"
        )
    if isinstance(exc, redis.InvalidResponse):
        return (
            f"llmq: what answers at {where} is not Redis ({why}); check the host and port in {setting} "
            "(Redis listens on 6379 by default)"
        )
    if "DB index is out of range" in why:
        return (
            f"llmq: Redis at {where} has no such database ({why}); use a database number below its "
            f"`databases` setting (16 by default) at the end of {setting}"
        )
    if OOM_TEXT in why:
        return (
            f"llmq: Redis at {where} is full: it refused a write (used memory > maxmemory); retry later, or "
            "give Redis more memory (CONFIG SET maxmemory, ops/redis.conf) or keep results shorter (LLMQ_RESULT_TTL_S)"
        )
    return f"llmq: Redis at {where} refused the command ({why}); check {setting} and the server's log"


def broker_line(exc: BaseException, url: str) -> str:
    """The one line for a failure of the job queue's broker at ``url`` (RabbitMQ, or Redis through kombu)."""
    where, why = shown(url), _reason(exc)
    code = getattr(exc, "reply_code", None) or getattr(exc, "code", None)
    if code == _AMQP_ACCESS_REFUSED:
        return (
            f"llmq: the job queue's broker at {where} refused the login ({why}); "
            "check the user and password in LLMQ_BROKER_URL"
        )
    if code == _AMQP_NOT_ALLOWED:
        return (
            f"llmq: the job queue's broker at {where} refused the virtual host ({why}); create it "
            "(rabbitmqctl add_vhost NAME; rabbitmqctl set_permissions -p NAME USER '.*' '.*' '.*') "
            "or fix the vhost at the end of LLMQ_BROKER_URL"
        )
    return (
        f"llmq: cannot reach the job queue's broker at {where} ({why}); "
        "start it or point LLMQ_BROKER_URL at a running one (unset, the queue is in LLMQ_REDIS_URL)"
    )


def _is_amqp_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".", 1)[0] == "amqp"


def explain(exc: BaseException, *, redis_url: str, broker_url: str) -> str | None:
    """The one line a command prints for ``exc``, or ``None`` when it is not a Redis or broker failure."""
    if isinstance(exc, Unusable):
        return str(exc)
    if isinstance(exc, OperationalError) or _is_amqp_error(exc):
        return broker_line(exc, broker_url)
    if isinstance(exc, redis.RedisError):
        return redis_line(exc, redis_url)
    return None


def ping_redis(url: str, timeout_s: float, setting: str = "LLMQ_REDIS_URL") -> None:
    """PING ``url`` once (plain or Sentinel); raises what redis-py raises, or :class:`Unusable` when a
    quick look shows that what listens there is not Redis (:func:`probe_not_redis`)."""
    from workers.connections.redisclient import redis_client

    line = probe_not_redis(url, min(timeout_s, 2.0), setting)
    if line is not None:
        raise Unusable(line)
    client = redis_client(url, max_connections=2, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    finally:
        client.close()


def probe_not_redis(url: str, timeout_s: float, setting: str = "LLMQ_REDIS_URL") -> str | None:
    """The one line when a ``redis://`` URL's port is served by something that is not Redis, or a
    ``rediss://`` URL's by a Redis without TLS, else None.

    An HTTP server (the simulator, the gateway, any web server) waits for the end of a request's
    headers, so redis-py's PING is met by silence and, seconds later, read as "cannot reach Redis".
    ``PING / HTTP/1.0`` and an empty line is a complete request to both: Redis answers an error
    (``-ERR wrong number of arguments``, or ``-NOAUTH``) and skips the empty line, an HTTP server
    answers with a status line. Anything else (nothing listening, a silent server) is left to the
    PING that follows, whose error says which.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "rediss" and parts.hostname:
        return _plain_redis_behind_rediss(parts.hostname, parts.port or 6379, timeout_s, url, setting)
    if parts.scheme != "redis" or not parts.hostname:
        return None
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=timeout_s) as sock:
            sock.sendall(b"PING / HTTP/1.0\r\n\r\n")
            reply = sock.recv(64)
    except OSError:  # refused, unreachable or silent: redis-py's own error says which
        return None
    if reply[:1] in (b"+", b"-"):
        return None  # Redis (answering, or asking for a password)
    first = reply.split(b"\r\n", 1)[0].decode("ascii", "replace")
    if reply.startswith(b"HTTP/"):
        what = f"an HTTP server ({first})"
    elif reply:
        what = f"something that answered {first[:40]!r}"
    else:
        what = "something that hung up without a word (a Redis that wants TLS needs rediss://)"
    return (
        f"llmq: what answers at {shown(url)} is not Redis but {what}; check the host and port in {setting} "
        "(Redis listens on 6379 by default; llmq simulate on 8790, llmq gateway on 8000)"
    )


def _plain_redis_behind_rediss(host: str, port: int, timeout_s: float, url: str, setting: str) -> str | None:
    """The line for a ``rediss://`` URL (TLS) at a Redis that speaks plain text, else None.

    The TLS handshake meets a server waiting for a command: both sides wait, and seconds later
    redis-py says "Timeout connecting to server", read as "cannot reach Redis ... start Redis". A
    plain ``PING`` tells: a Redis without TLS answers it (``+PONG``, or an error asking for a
    password); a TLS port answers with an alert or hangs up, and the TLS ping that follows decides."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:  # refused, unreachable or silent: redis-py's own error says which
        return None
    if reply[:1] not in (b"+", b"-"):
        return None
    return (
        f"llmq: Redis at {shown(url)} does not use TLS (it answered a plain PING); use redis:// instead "
        f"of rediss:// in {setting}, or turn TLS on in that Redis (tls-port)"
    )


def check_broker(url: str, timeout_s: float) -> None:
    """Connect to the job queue's broker once (no retry): RabbitMQ raises kombu's or amqp's error, a
    Redis of its own :class:`Unusable` (its line names ``LLMQ_BROKER_URL``).

    A command that consumes or serves the queue (a worker, the gateway, Flower) calls this before it
    starts, so a wrong ``LLMQ_BROKER_URL`` is one line at once, not a worker retrying for minutes or
    a gateway that starts and fails each request."""
    from kombu import Connection

    from workers.connections.brokerurl import is_amqp

    if not is_amqp(url):
        try:
            ping_redis(url, timeout_s, "LLMQ_BROKER_URL")
        except redis.RedisError as exc:
            raise Unusable(redis_line(exc, url, "LLMQ_BROKER_URL")) from exc
        return

    with Connection(url, connect_timeout=timeout_s) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=max(1, round(timeout_s)))
