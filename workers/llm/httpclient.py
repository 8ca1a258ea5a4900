"""The HTTP edge: with ``chunkedbody`` (its streaming body reader), the only module that imports the
HTTP client library.

One :class:`HTTPClient` per worker process (built with the worker's resources,
``workers/runtime/resources.py``), with pool limits sized to the worker's concurrency: the
library's defaults (100 connections, 20 keep-alive, 5 s pool timeout) starve long streams, whose
connections stay checked out for minutes while new calls time out waiting for one. Transport failures are
mapped to our error tree here; HTTP error statuses are mapped by the provider's own
``error_mapper`` (each provider has its own error body), also called from here, so that nothing
above this module ever sees a library exception. There is no retry loop in this layer: the retry
wrapper is the only one.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2 as httpx

from workers.connections.socketcheck import Probe, native_probe
from workers.llm.abort import AbortSignal
from workers.llm.chunkedbody import take_over
from workers.llm.errors import (
    IncompleteStreamError,
    JobCancelledError,
    LLMQError,
    ProviderConnectionError,
    ProviderTimeoutError,
    ResponseTooLargeError,
)
from workers.llm.watchdog import Deadline, Watchdog, shared_watchdog

__all__ = ["ErrorMapper", "HTTPClient", "HTTPSettings", "StreamingResponse"]

#: ``(status, headers, body) -> error``; each provider supplies one.
ErrorMapper = Callable[[int, Mapping[str, str], bytes], LLMQError]


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    max_connections: int = 200
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    write_timeout: float = 10.0
    #: Waiting for a free pooled connection; as long as a stream may last.
    pool_timeout: float = 120.0
    #: Use HTTP/2 where the upstream offers it over TLS (ALPN); plain http stays HTTP/1.1.
    http2: bool = True
    #: Whole-request deadline: headers and the entire body, however slowly it trickles in (the
    #: timeouts above bound each read only). The response is closed when it passes.
    request_timeout: float = 600.0
    #: Largest response body accepted (streamed or not); more ends the attempt, typed.
    max_response_bytes: int = 64 * 1024 * 1024
    #: Independent connection pools requests are spread over (0 = one per
    #: :data:`CONNECTIONS_PER_SHARD` connections). The library's pool walks every pooled
    #: connection on every request and every response close (state checks, and a ``poll`` of
    #: each idle socket), so one pool of 200 connections costs O(200) per request; shards keep
    #: that to a few.
    pool_shards: int = 0


#: Connections per pool shard when ``pool_shards`` is 0: 32 cost ~3.3 % of a gevent worker's
#: samples at 200 streams (py-spy, ``_assign_requests_to_connections``); see bench/RESULTS-queue.md.
CONNECTIONS_PER_SHARD = 8


#: Most distinct request URLs :class:`HTTPClient` keeps parsed.
_URL_CACHE_SIZE = 256


@contextlib.contextmanager
def _mapped(provider: str, model: str, *, mid_stream: bool = False, url: httpx.URL | None = None) -> Iterator[None]:
    """httpx's errors as the tree's. When the connection to ``url`` could not be made its origin is
    named (scheme, host and port: never a path, query or user info, which may carry a key): a wrong
    base URL says which one."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        where = f" (connecting to {_origin(url)})" if url is not None else ""
        message = f"{type(exc).__name__}: {exc}{where}"
        if isinstance(exc, httpx.ConnectTimeout):
            raise ProviderTimeoutError(message, provider=provider, model=model) from None
        raise ProviderConnectionError(message, provider=provider, model=model) from None
    except httpx.TimeoutException as exc:
        raise ProviderTimeoutError(
            f"{type(exc).__name__}: upstream did not answer in time", provider=provider, model=model
        ) from None
    except httpx.RemoteProtocolError as exc:
        cls = IncompleteStreamError if mid_stream else ProviderConnectionError
        raise cls(f"upstream closed the connection: {exc}", provider=provider, model=model) from None
    except httpx.TransportError as exc:
        cls = IncompleteStreamError if mid_stream else ProviderConnectionError
        raise cls(f"{type(exc).__name__}: {exc}", provider=provider, model=model) from None


def _origin(url: httpx.URL) -> str:
    """``scheme://host:port`` of ``url``: where a connection goes, without what may be secret."""
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}"


class StreamingResponse:
    """An open 2xx response whose body is read incrementally. Always closed by its owner.

    :meth:`close` may come from another thread or greenlet while one reads (a job's cancel);
    it then makes sure the upstream learns of it and the blocked read wakes, both for HTTP/1.1
    (socket shutdown) and HTTP/2 (``RST_STREAM``), see :meth:`_abandon`.
    """

    __slots__ = (
        "_closed",
        "_expired",
        "_max_bytes",
        "_model",
        "_provider",
        "_reader",
        "_response",
        "_timeout",
        "_timer",
        "_watchdog",
        "direct",
        "headers",
        "status",
    )

    def __init__(
        self,
        response: httpx.Response,
        provider: str,
        model: str,
        *,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._response = response
        self._provider = provider
        self._model = model
        self._closed = False
        self._expired = False
        self._max_bytes = max_bytes
        #: Which thread (greenlet, under gevent's patching) is inside iter_bytes, if any.
        self._reader: int | None = None
        #: The body is read straight off its HTTP/1.1 connection (``workers/llm/chunkedbody.py``),
        #: not through the library; known once reading started.
        self.direct = False
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        # the whole-request deadline: the watchdog closes the response when it passes, which
        # wakes a read blocked on a server that trickles bytes just inside the read timeout
        self._timeout = timeout_s
        self._watchdog = watchdog
        self._timer: Deadline | None = None
        if timeout_s is not None and watchdog is not None:
            self._timer = watchdog.schedule(max(timeout_s, 0.0), self._expire)

    def _expire(self) -> None:
        self._expired = True
        self.close()

    def _too_slow(self) -> ProviderTimeoutError:
        return ProviderTimeoutError(
            f"the whole request took longer than its {self._timeout:g}s deadline; response closed",
            provider=self._provider,
            model=self._model,
            code="request_timeout",
        )

    def iter_bytes(self) -> Iterator[bytes]:
        self._reader = threading.get_ident()
        limit = self._max_bytes
        seen = 0
        try:
            with _mapped(self._provider, self._model, mid_stream=True):
                raw = self._raw_ok()
                direct = take_over(self._response) if raw else None
                self.direct = direct is not None
                if direct is not None:
                    chunks: Iterator[bytes] = direct
                else:
                    chunks = self._response.iter_raw() if raw else self._response.iter_bytes()
                if limit is None:
                    yield from chunks
                else:
                    for chunk in chunks:
                        seen += len(chunk)
                        if seen > limit:
                            raise ResponseTooLargeError(
                                f"the response passed {limit} bytes (max_response_bytes); attempt ended",
                                provider=self._provider,
                                model=self._model,
                            )
                        yield chunk
                if direct is not None:  # read to its end: the connection goes back to the pool now, as
                    self._response.close()  # the library's own read does at the end
        except LLMQError as exc:
            if self._expired and not isinstance(exc, ResponseTooLargeError):
                raise self._too_slow() from None
            raise
        finally:
            self._reader = None
        if self._expired:
            raise self._too_slow()

    def read_all(self) -> bytes:
        """The whole body (bounded by ``max_bytes`` and the deadline); closes the response."""
        try:
            return b"".join(self.iter_bytes())
        finally:
            self.close()

    def _raw_ok(self) -> bool:
        # iter_raw skips the decoder machinery; only safe when the body is not content-encoded.
        return "content-encoding" not in self._response.headers

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the response; safe to call from another thread or greenlet (a job's cancel)."""
        timer, self._timer = self._timer, None
        if timer is not None and self._watchdog is not None:
            self._watchdog.cancel(timer)
        elsewhere = self._reader is not None and self._reader != threading.get_ident()
        if not self._closed:
            self._closed = True
            # still ours (not yet released to the pool) and unfinished: tell the upstream
            if not self._response.is_closed and self._abandon(wake=elsewhere) and elsewhere:
                return  # the reader wakes on the reset and releases the response itself
        with contextlib.suppress(Exception):
            self._response.close()

    def _abandon(self, *, wake: bool) -> bool:
        """Let the upstream know we stopped reading; ``True`` when a reader elsewhere was woken and
        closes the response itself (an HTTP/1.1 socket shut down, an HTTP/2 stream reset).

        HTTP/1.1: shut the socket down. Closing alone does not wake a thread blocked in ``recv``
        (the read would sit until the read timeout); the connection is discarded anyway.

        HTTP/2: httpcore2 (2.16) closes an unfinished stream without telling the server, which
        then keeps generating (and billing) into the void, and the data it still sends is never
        acknowledged, so the shared connection's flow-control window shrinks with every
        abandoned stream until the connection stalls. We send ``RST_STREAM(CANCEL)`` ourselves,
        the way httpcore2 drives h2 (under its state lock, then a flush); h2 acknowledges data
        arriving on a reset stream. To wake a reader blocked on this stream elsewhere, a reset
        event is queued for it and a PING makes the server answer. Best effort through httpcore2's
        internals (the version is pinned; ``test_provider_http2`` checks it): when their shape
        differs, nothing happens and the response is merely closed, as before.
        """
        if self._response.http_version == "HTTP/1.1":
            stream = self._response.extensions.get("network_stream")
            if stream is None:
                return False
            _shut_down(stream)
            # a reader blocked elsewhere wakes (end of stream) and closes the response itself: closing
            # it here too raced that close across threads in the pool's bookkeeping, and under a burst
            # of cancels another call's connection was closed without a shutdown under its reader,
            # which then sat in recv until its read timeout (120 s; tests/workers/jobs/test_cancel_burst.py)
            return wake
        return self._abandon_h2(wake=wake)

    def _abandon_h2(self, *, wake: bool) -> bool:
        """HTTP/2: reset the stream (see :meth:`_abandon`); ``True`` if it was reset."""
        h2_stream: object = self._response.stream
        for attr in ("_stream", "_httpcore_stream", "_stream"):
            h2_stream = getattr(h2_stream, attr, None)
        conn = getattr(h2_stream, "_connection", None)
        stream_id, request = getattr(h2_stream, "_stream_id", None), getattr(h2_stream, "_request", None)
        state, lock, events = (getattr(conn, name, None) for name in ("_h2_state", "_state_lock", "_events"))
        if conn is None or state is None or lock is None or events is None or stream_id is None or request is None:
            return False
        try:
            import h2.events

            with lock:
                state.reset_stream(stream_id, error_code=_H2_CANCEL)
                if wake:
                    pending = events.get(stream_id)
                    if pending is not None:
                        pending.append(
                            h2.events.StreamReset(stream_id=stream_id, error_code=_H2_CANCEL, remote_reset=False)
                        )
                    state.ping(b"llmq-rst")
            conn._write_outgoing_data(request)
        except Exception:  # closed meanwhile, connection gone: the plain close below is all we can do
            return False
        return True


def _shut_down(stream: httpcore2.NetworkStream) -> None:
    """Shut an HTTP/1.1 connection's socket down: unlike a close, this wakes a ``recv`` blocked
    on it in another thread or greenlet. The connection is not reused afterwards."""
    sock = stream.get_extra_info("socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


#: HTTP/2 error code CANCEL (RFC 9113 section 7): "the stream is no longer needed".
_H2_CANCEL = 0x8


class HTTPClient:
    """A pooled HTTP client shared by every job of a worker process."""

    def __init__(
        self,
        settings: HTTPSettings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        watchdog: Watchdog | None = None,
    ):
        self.settings = settings = settings or HTTPSettings()
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=30.0,
        )
        timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.write_timeout,
            pool=settings.pool_timeout,
        )
        shards = (
            1
            if transport is not None
            else settings.pool_shards or -(-settings.max_connections // CONNECTIONS_PER_SHARD)
        )
        probe = native_probe()
        # one TLS context for every shard: each client would load the CA certificates into its own
        # (~1.1 MB each: 25 shards at 200 connections were ~15 MB of a worker's memory)
        verify: ssl.SSLContext | bool = httpx.create_ssl_context(trust_env=True) if transport is None else True
        # every shard may use the full limit: a job holds one connection at a time, so the
        # worker's concurrency bounds the total, and no job waits on a full shard beside idle ones
        self._clients = [
            httpx.Client(
                limits=limits,
                timeout=timeout,
                http2=settings.http2 and transport is None and _h2_available(),
                transport=transport,
                trust_env=True,
                verify=verify,
            )
            for _ in range(max(shards, 1))
        ]
        if transport is None and probe is not None:
            for client in self._clients:
                _use_backend(client, _ProbingBackend(probe))
        self._turn = itertools.count()
        #: Parsed request URLs (a worker posts to a handful of endpoints; parsing one, host
        #: address included, was ~1.5 % of a short job's CPU). Bounded: cleared when full.
        self._urls: dict[str, httpx.URL] = {}
        self._watchdog = watchdog or shared_watchdog()

    @property
    def _client(self) -> httpx.Client:
        """The pool for the next request (round robin)."""
        clients = self._clients
        return clients[next(self._turn) % len(clients)] if len(clients) > 1 else clients[0]

    def post(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        provider: str,
        model: str,
        error_mapper: ErrorMapper,
        abort: AbortSignal | None = None,
        timeout_s: float | None = None,
    ) -> tuple[Mapping[str, str], bytes]:
        """POST and read the whole 2xx body; any other status raises the mapped error.

        ``abort`` (see ``workers/llm/abort.py``) lets another thread or greenlet end the call:
        the read stops at once and :class:`JobCancelledError` is raised. ``timeout_s`` (a
        provider's own ``timeout_s``) caps the connect, write and read timeouts of this call.
        """
        if abort is None:
            started = time.monotonic()
            response = self._send(url, headers, body, provider, model, timeout_s)
            content = self._reader(response, provider, model, started).read_all()
        else:
            response, content = self._post_abortable(url, headers, body, provider, model, abort, timeout_s)
        if response.status_code >= 300:
            raise error_mapper(response.status_code, response.headers, content)
        return response.headers, content

    def _reader(self, response: httpx.Response, provider: str, model: str, started: float) -> StreamingResponse:
        """The response's body reader, bounded in size and by the whole-request deadline."""
        settings = self.settings
        return StreamingResponse(
            response,
            provider,
            model,
            max_bytes=settings.max_response_bytes,
            timeout_s=settings.request_timeout - (time.monotonic() - started),
            watchdog=self._watchdog,
        )

    def _send(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        provider: str,
        model: str,
        limit_s: float | None = None,
        method: str = "POST",
    ) -> httpx.Response:
        """Send; returns once the status line and headers are in, the body still to be read."""
        client = self._client
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        if limit_s is None:
            request = client.build_request(method, parsed, headers=headers, content=body)
        else:
            s = self.settings
            timeout = httpx.Timeout(
                connect=min(s.connect_timeout, limit_s),
                read=min(s.read_timeout, limit_s),
                write=min(s.write_timeout, limit_s),
                pool=s.pool_timeout,
            )
            request = client.build_request(method, parsed, headers=headers, content=body, timeout=timeout)
        with _mapped(provider, model, url=parsed):
            return client.send(request, stream=True)

    def _post_abortable(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        provider: str,
        model: str,
        abort: AbortSignal,
        limit_s: float | None = None,
    ) -> tuple[httpx.Response, bytes]:
        if abort.fired:
            raise JobCancelledError("cancelled before the request was sent", provider=provider, model=model)
        # HTTP/1.1: every socket read of this call (the wait for the status line included) is
        # armed on the signal by _ProbingStream; HTTP/2 streams share their socket, so there the
        # body read is armed through the response (a stream reset), once the headers are in
        token = _READ_ABORT.set(abort)
        try:
            started = time.monotonic()
            response = self._send(url, headers, body, provider, model, limit_s)
            reader = self._reader(response, provider, model, started)
            try:
                if response.http_version != "HTTP/1.1" and not abort.arm(reader.close):
                    raise JobCancelledError("cancelled while waiting for the answer", provider=provider, model=model)
                content = reader.read_all()
            finally:
                abort.disarm()
                reader.close()
        except LLMQError as exc:
            if abort.fired and not isinstance(exc, JobCancelledError):
                raise JobCancelledError(
                    "cancelled while waiting for the answer", provider=provider, model=model
                ) from None
            raise
        finally:
            _READ_ABORT.reset(token)
        return response, content

    def open_stream(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        provider: str,
        model: str,
        error_mapper: ErrorMapper,
        timeout_s: float | None = None,
    ) -> StreamingResponse:
        """POST and return the open response once its status line and headers arrived."""
        started = time.monotonic()
        response = self._send(url, headers, body, provider, model, timeout_s)
        reader = self._reader(response, provider, model, started)
        if response.status_code >= 300:
            raise error_mapper(response.status_code, response.headers, reader.read_all())
        return reader

    def call(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        provider: str,
        model: str = "",
        error_mapper: ErrorMapper,
        timeout_s: float | None = None,
    ) -> tuple[Mapping[str, str], bytes]:
        """Any other call of a provider's API (``GET``, ``DELETE``, an upload): the whole 2xx body,
        or the mapped error; bounded like :meth:`post`."""
        started = time.monotonic()
        response = self._send(url, headers, body, provider, model, timeout_s, method)
        content = self._reader(response, provider, model, started).read_all()
        if response.status_code >= 300:
            raise error_mapper(response.status_code, response.headers, content)
        return response.headers, content

    def download(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        provider: str,
        model: str = "",
        error_mapper: ErrorMapper,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
    ) -> StreamingResponse:
        """``GET`` a body too large to hold (a provider batch's results), read incrementally: the
        caller closes it. ``max_bytes`` and ``timeout_s`` (whole download) replace the limits of a
        call (``None``: no size limit; the worker's request deadline)."""
        started = time.monotonic()
        response = self._send(url, headers, None, provider, model, None, "GET")
        deadline = (timeout_s or self.settings.request_timeout) - (time.monotonic() - started)
        reader = StreamingResponse(
            response, provider, model, max_bytes=max_bytes, timeout_s=deadline, watchdog=self._watchdog
        )
        if response.status_code >= 300:
            raise error_mapper(response.status_code, response.headers, reader.read_all())
        return reader

    def close(self) -> None:
        for client in self._clients:
            client.close()


#: The abort signal of the whole-body call this thread or greenlet is making (see ``post``).
_READ_ABORT: contextvars.ContextVar[AbortSignal | None] = contextvars.ContextVar("llmq_read_abort", default=None)


class _ProbingStream(httpcore2.NetworkStream):
    """The library's stream, with "is_readable" answered by :func:`~workers.connections.socketcheck.native_probe`'s check, and
    HTTP/1.1 reads that an :class:`AbortSignal` can end (the socket is shut down, which wakes a
    blocked ``recv`` in any thread or greenlet; the connection is discarded afterwards)."""

    #: A "not readable" answer is reused for this long (seconds) while the connection stays unused.
    #: The pool probes *every* idle connection on each request and each response close: with 200
    #: connections over 7 pools and short jobs, each idle socket was polled ~60 times a second
    #: (py-spy at 0 s upstream: 7 % of the worker's CPU; other clients, urllib3 or aiohttp, check
    #: only the connection they hand out). A server's keep-alive close comes after seconds of
    #: idleness and is seen at most this much later; a request sent on such a connection in the
    #: window fails before any answer, as a connection error, which is retried (the same race
    #: every pooled client has between its check and its send, made 50 ms wide).
    PROBE_REUSE_S = 0.05
    #: The clock of that window (a seam for tests).
    clock: Callable[[], float] = staticmethod(time.monotonic)

    #: A request's header block is held back (HTTP/1.1 only) until its body, the next read or the
    #: next write comes, if it is at most this long: the headers and the body go out in one send
    #: (httpcore writes them separately: two system calls and two TCP segments per request).
    HOLD_MAX = 65_536

    def __init__(self, inner: httpcore2.NetworkStream, probe: Probe) -> None:
        self._inner = inner
        self._probe = probe
        self._h2: bool | None = None
        #: When the socket last probed "not readable" (monotonic); 0.0 = no such answer to reuse.
        self._quiet_at = 0.0
        #: The held header block and its write timeout (see :attr:`HOLD_MAX`).
        self._held: bytes = b""
        self._held_timeout: float | None = None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._quiet_at = 0.0
        if self._held:  # a request is always written whole before its answer is read
            self._write_held()
        abort = _READ_ABORT.get()
        if abort is None or self._shared():
            return self._inner.read(max_bytes, timeout)
        if not abort.arm(self._shutdown):
            return b""  # fired already: end of stream, which the caller maps to a cancel
        try:
            return self._inner.read(max_bytes, timeout)
        finally:
            abort.disarm()

    def _shared(self) -> bool:
        """HTTP/2 (ALPN "h2"): the socket carries other calls' streams too; never shut it down."""
        if self._h2 is None:
            ssl_object = self._inner.get_extra_info("ssl_object")
            self._h2 = bool(ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2")
        return self._h2

    def _shutdown(self) -> None:
        _shut_down(self._inner)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._quiet_at = 0.0
        if self._held:
            buffer = self._held + buffer
            self._held = b""
        if not buffer:
            return  # the end of a body framed by its length: nothing to send
        if buffer.endswith(b"\r\n\r\n") and len(buffer) <= self.HOLD_MAX and not self._shared():
            # a header block: its body (or the empty end of message) follows at once; an HTTP/2
            # socket is never held (another call's reader may be waiting on this one's request)
            self._held, self._held_timeout = buffer, timeout
            return
        self._inner.write(buffer, timeout)

    def _write_held(self) -> None:
        held, self._held = self._held, b""
        self._inner.write(held, self._held_timeout)

    def close(self) -> None:
        self._held = b""
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        return _ProbingStream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._probe)

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":
            sock = self._inner.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                now = self.clock()
                if self._quiet_at and now - self._quiet_at < self.PROBE_REUSE_S:
                    return False
                readable = self._probe(sock)
                self._quiet_at = 0.0 if readable else now
                return readable
        return self._inner.get_extra_info(info)


class _ProbingBackend(httpcore2.SyncBackend):
    def __init__(self, probe: Probe) -> None:
        self._probe = probe

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        return _ProbingStream(super().connect_tcp(host, port, timeout, local_address, socket_options), self._probe)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        return _ProbingStream(super().connect_unix_socket(path, timeout, socket_options), self._probe)


def _use_backend(client: httpx.Client, backend: httpcore2.NetworkBackend) -> None:
    """Give the client's connection pool our network backend.

    httpx2's transport does not take one, so this sets the pool's attribute; when a library
    update moves it, nothing changes (the library's own check stays) and
    ``test_pools_probe_idle_connections_with_the_native_poll`` says so.
    """
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    if isinstance(pool, httpcore2.ConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = backend


def _h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:  # pragma: no cover - h2 is a dependency
        return False
    return True


def is_tls(url: str) -> bool:
    return urlsplit(url).scheme == "https"
