"""The plumbing every HTTP provider shares: one JSON ``POST`` endpoint, whole-body or streamed.

:class:`HTTPProvider` owns the request cycle (headers, the missing-key check, the error mapper
handed to the HTTP edge, malformed whole-body answers, wrapping an open response in the
provider's stream parser), so that a provider module only translates its wire format: it
implements :meth:`~HTTPProvider.build_body`, :meth:`~HTTPProvider.error_from_body`,
:meth:`~HTTPProvider.parse_completion` and :meth:`~HTTPProvider.open_response_stream`.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from typing import ClassVar, Generic, TypeVar

from workers.llm.base import ChatRequest, Completion, Provider, ResponseBody, ResponseStream, check_completion
from workers.llm.errormap import error_in_stream
from workers.llm.errors import ConfigurationError, LLMQError
from workers.llm.httpclient import ErrorMapper, HTTPClient

__all__ = ["HTTPProvider"]

StreamT = TypeVar("StreamT", bound=ResponseStream)

#: What a whole-body parser raises on a payload of an unexpected shape.
_MALFORMED = (ValueError, TypeError, KeyError, AttributeError, IndexError)


class HTTPProvider(Provider, Generic[StreamT]):
    """A provider spoken over one JSON endpoint (``url``), authenticated by an optional key."""

    #: ``accept`` of a streamed call: SSE, or NDJSON for Ollama.
    stream_media_type: ClassVar[str] = "text/event-stream"
    #: The worker environment variable the key comes from, named when it is missing.
    key_env: str = ""

    def __init__(
        self,
        http: HTTPClient,
        *,
        url: str,
        api_key: str | None,
        key_required: bool = False,
        static_headers: Mapping[str, str] | None = None,
        name: str | None = None,
        key_env: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._http = http
        self._url = url
        self.server_url = url
        self._api_key = api_key
        #: The official API refuses unauthenticated calls: fail before sending one.
        self._key_required = key_required
        self._static_headers = dict(static_headers or {})
        if name is not None:  # a [providers.<name>] entry: its name prefixes model ids and errors
            self.name = name
        if key_env is not None:
            self.key_env = key_env
        #: Per-provider cap on one call (``timeout_s`` of its config entry); None: the worker's.
        self._timeout_s = timeout_s

    # --- what a provider module translates ------------------------------------------------------

    @abstractmethod
    def build_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        """The body of ``request`` to ``model`` in the provider's wire format (its parameters:
        ``request.params``)."""

    @abstractmethod
    def error_from_body(self, status: int, headers: Mapping[str, str], body: bytes, *, model: str) -> LLMQError:
        """An HTTP error response mapped onto the error tree (secrets redacted)."""

    @abstractmethod
    def parse_completion(
        self, model: str, request: ChatRequest, headers: Mapping[str, str], content: bytes
    ) -> Completion:
        """A whole-body answer to ``request``; raises ``ValueError``/``KeyError``... on an unexpected shape."""

    @abstractmethod
    def open_response_stream(self, model: str, request: ChatRequest, response: ResponseBody) -> StreamT:
        """The provider's stream parser over an open 2xx response to ``request``."""

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """How the key is sent; a bearer token unless the provider says otherwise."""
        return {"authorization": f"Bearer {api_key}"}

    def endpoint(self, model: str, *, stream: bool) -> str:
        """The URL of one call; the same for every call unless the model is part of the path."""
        return self._url

    def sign(self, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        """The final headers of a request (a provider that signs requests adds its signature)."""
        return headers

    # --- the shared request cycle ----------------------------------------------------------------

    def _check_key(self, model: str) -> None:
        if self._api_key is None and self._key_required:
            raise ConfigurationError(
                f"{self.key_env} is not set in the worker's environment", provider=self.name, model=model
            )

    @property
    def http(self) -> HTTPClient:
        """The worker's HTTP client this provider calls through (its batch API shares it)."""
        return self._http

    def api_headers(self, model: str = "") -> dict[str, str]:
        """The headers of the provider's other calls (files, batches): its static headers and its key."""
        self._check_key(model)
        headers = dict(self._static_headers)
        if self._api_key:
            headers.update(self.auth_headers(self._api_key))
        return headers

    def headers(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, str]:
        self._check_key(model)
        headers = {
            "content-type": "application/json",
            "accept": self.stream_media_type if stream else "application/json",
            **self._static_headers,
        }
        headers.update(request.headers)
        if self._api_key:
            headers.update(self.auth_headers(self._api_key))
        return headers

    def _mapper(self, model: str) -> ErrorMapper:
        def mapper(status: int, headers: Mapping[str, str], body: bytes) -> LLMQError:
            return self.error_from_body(status, headers, body, model=model)

        return mapper

    def complete(self, model: str, request: ChatRequest) -> Completion:
        url = self.endpoint(model, stream=False)
        body = self.body_bytes(model, request)
        headers, content = self._http.post(
            url,
            headers=self.sign(url, self.headers(model, request, stream=False), body),
            body=body,
            provider=self.name,
            model=model,
            error_mapper=self._mapper(model),
            abort=request.abort,
            timeout_s=self._timeout_s,
        )
        return self.answer(model, request, headers, content)

    def answer(self, model: str, request: ChatRequest, headers: Mapping[str, str], content: bytes) -> Completion:
        """A whole-body answer to ``request`` (a live call's, or a provider batch's line), checked;
        a body of an unexpected shape is a typed error."""
        try:
            return check_completion(self.parse_completion(model, request, headers, content))
        except _MALFORMED as exc:
            raise error_in_stream(provider=self.name, model=model, message=f"malformed response: {exc}") from exc

    def body_bytes(self, model: str, request: ChatRequest) -> bytes:
        """The JSON body of a whole-body call of ``request``: the bytes :meth:`complete` sends."""
        return json.dumps(self.build_body(model, request, stream=False)).encode()

    def stream(self, model: str, request: ChatRequest) -> StreamT:
        url = self.endpoint(model, stream=True)
        body = json.dumps(self.build_body(model, request, stream=True)).encode()
        response = self._http.open_stream(
            url,
            headers=self.sign(url, self.headers(model, request, stream=True), body),
            body=body,
            provider=self.name,
            model=model,
            error_mapper=self._mapper(model),
            timeout_s=self._timeout_s,
        )
        return self.open_response_stream(model, request, response)
