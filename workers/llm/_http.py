"""The HTTP edge: the only module that imports the HTTP client library.

One :class:`HTTPClient` per worker process (built in ``worker_process_init``), with pool limits
sized to the worker's concurrency: the library's defaults (100 connections, 20 keep-alive, 5 s
pool timeout) starve long streams (``notes/celery-at-scale.md`` §6). Transport failures are
mapped to our error tree here; HTTP error statuses are mapped by the provider's own
``error_mapper`` (each provider has its own error body), also called from here, so that nothing
above this module ever sees a library exception. There is no retry loop in this layer: the retry
wrapper is the only one.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx2 as httpx

from workers.llm.errors import (
    IncompleteStreamError,
    LLMQError,
    ProviderConnectionError,
    ProviderTimeoutError,
)

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


@contextlib.contextmanager
def _mapped(provider: str, model: str, *, mid_stream: bool = False) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderTimeoutError(f"{type(exc).__name__}: upstream did not answer in time", provider, model) from None
    except httpx.RemoteProtocolError as exc:
        cls = IncompleteStreamError if mid_stream else ProviderConnectionError
        raise cls(f"upstream closed the connection: {exc}", provider, model) from None
    except httpx.TransportError as exc:
        cls = IncompleteStreamError if mid_stream else ProviderConnectionError
        raise cls(f"{type(exc).__name__}: {exc}", provider, model) from None


class StreamingResponse:
    """An open 2xx response whose body is read incrementally. Always closed by its owner."""

    __slots__ = ("_closed", "_model", "_provider", "_response", "headers", "status")

    def __init__(self, response: httpx.Response, provider: str, model: str) -> None:
        self._response = response
        self._provider = provider
        self._model = model
        self._closed = False
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    def iter_bytes(self) -> Iterator[bytes]:
        with _mapped(self._provider, self._model, mid_stream=True):
            yield from self._response.iter_raw() if self._raw_ok() else self._response.iter_bytes()

    def _raw_ok(self) -> bool:
        # iter_raw skips the decoder machinery; only safe when the body is not content-encoded.
        return "content-encoding" not in self._response.headers

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the response; safe to call from another thread or greenlet (a job's cancel)."""
        if not self._closed:
            self._closed = True
            if not self._response.is_closed:  # still ours: not yet released to the pool
                self._interrupt()
            with contextlib.suppress(Exception):
                self._response.close()

    def _interrupt(self) -> None:
        """Wake a read blocked in another thread on a silent upstream.

        Closing a socket does not wake a thread blocked in ``recv`` on it (the read would sit until
        the read timeout); shutting it down does. Only for HTTP/1.1, where an unfinished response's
        connection is discarded anyway; an HTTP/2 connection is shared by other streams. (Under
        gevent, closing alone already wakes the reading greenlet.)
        """
        if self._response.http_version != "HTTP/1.1":
            return
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class HTTPClient:
    """A pooled HTTP client shared by every job of a worker process."""

    def __init__(self, settings: HTTPSettings | None = None, *, transport: httpx.BaseTransport | None = None):
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
        self._client = httpx.Client(
            limits=limits,
            timeout=timeout,
            http2=settings.http2 and transport is None and _h2_available(),
            transport=transport,
            trust_env=True,
        )

    def post(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        provider: str,
        model: str,
        error_mapper: ErrorMapper,
    ) -> tuple[Mapping[str, str], bytes]:
        """POST and read the whole 2xx body; any other status raises the mapped error."""
        with _mapped(provider, model):
            response = self._client.post(url, headers=headers, content=body)
            content = response.content
        if response.status_code >= 300:
            raise error_mapper(response.status_code, response.headers, content)
        return response.headers, content

    def open_stream(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        provider: str,
        model: str,
        error_mapper: ErrorMapper,
    ) -> StreamingResponse:
        """POST and return the open response once its status line and headers arrived."""
        request = self._client.build_request("POST", url, headers=headers, content=body)
        with _mapped(provider, model):
            response = self._client.send(request, stream=True)
        if response.status_code >= 300:
            try:
                with _mapped(provider, model):
                    content = response.read()
            finally:
                response.close()
            raise error_mapper(response.status_code, response.headers, content)
        return StreamingResponse(response, provider, model)

    def close(self) -> None:
        self._client.close()


def _h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:  # pragma: no cover - h2 is a dependency
        return False
    return True


def is_tls(url: str) -> bool:
    return urlsplit(url).scheme == "https"
