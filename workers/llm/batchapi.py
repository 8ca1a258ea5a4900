"""Provider batch APIs (OpenAI Batch, Anthropic Message Batches): what every one offers the batcher.

A :class:`BatchAPI` only translates, like a provider module: a request becomes one line of a batch
whose body is, byte for byte, the body the live adapter sends for a whole-body call
(:meth:`~workers.llm.httpprovider.HTTPProvider.body_bytes`); a line of the results becomes a
:class:`LineOutcome` (the answer's bytes, parsed later by the live adapter's own
:meth:`~workers.llm.httpprovider.HTTPProvider.answer`, or an error mapped onto the one error tree,
or expired, or cancelled). Errors of the batch calls themselves (an upload refused, a 429 while
polling) are the provider's own error mapping, raised as :class:`~workers.llm.errors.LLMQError`.

Every step can be found again after a crash, so the batcher never sends a batch twice:
:meth:`BatchAPI.find_upload` (OpenAI: the file by its name, which carries our key) and
:meth:`BatchAPI.find` (OpenAI: by our key in the batch's ``metadata``; Anthropic, whose batches
carry no metadata: the batch of the same size created since the step began that the batcher
does not know yet). Line ids are ``<key>-<n>``, so results that are not ours are noticed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from workers.llm.base import ChatRequest, Completion, iter_lines
from workers.llm.errors import LLMQError
from workers.llm.httpclient import ErrorMapper, HTTPClient
from workers.llm.httpprovider import HTTPProvider

__all__ = [
    "MAX_RESULT_LINE_BYTES",
    "BatchAPI",
    "BatchState",
    "LineKind",
    "LineOutcome",
    "RemoteBatch",
    "line_id",
    "line_index",
]

LineKind = Literal["succeeded", "errored", "expired", "cancelled"]
BatchState = Literal["running", "cancelling", "ended", "failed"]
#: A batch's result line may be far longer than a stream's (a whole answer): bounded all the same.
MAX_RESULT_LINE_BYTES = 32 * 1024 * 1024
#: Clock skew allowed between us and the provider when finding a batch created before a crash.
FIND_SKEW_S = 120.0


def line_id(key: str, index: int) -> str:
    """The ``custom_id`` of line ``index`` of the batch ``key`` (``[a-zA-Z0-9_-]``, Anthropic's rule)."""
    return f"{key}-{index}"


def line_index(key: str, custom_id: str) -> int | None:
    """The line a ``custom_id`` names, or None when it is not one of batch ``key``'s."""
    prefix, _, number = custom_id.rpartition("-")
    return int(number) if prefix == key and number.isdigit() else None


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """One line of a batch's results."""

    custom_id: str
    kind: LineKind
    #: ``succeeded``: the answer's body, as a live whole-body call receives it.
    body: bytes = b""
    #: ``errored``: the line's error, on the one error tree (retryable or not, like a live call's).
    error: LLMQError | None = None


@dataclass(frozen=True, slots=True)
class RemoteBatch:
    """A provider batch as last seen: its normalized state and the provider's own."""

    id: str
    state: BatchState
    status: str
    #: Unix seconds (the provider's clock).
    created_at: float
    total: int
    #: Lines answered so far (succeeded or errored).
    done: int
    #: Where the results are: OpenAI's output and error file ids, Anthropic's ``results_url``.
    results: tuple[str, ...] = ()
    #: Why a batch ``failed`` (OpenAI's validation errors), one line.
    reason: str | None = None


class BatchAPI(ABC):
    """One provider's batch API over the worker's HTTP client, beside its live adapter."""

    #: Most lines one batch may hold (the provider's limit).
    max_lines: int
    #: The lines go up as a file first (:meth:`upload`), the batch is created from it (OpenAI).
    uploads: bool = False

    def __init__(self, provider: HTTPProvider[Any], http: HTTPClient) -> None:
        self.provider = provider
        self._http = http

    @property
    def name(self) -> str:
        return self.provider.name

    # --- what a provider module implements ----------------------------------------------------------

    def line(self, custom_id: str, model: str, request: ChatRequest) -> bytes:
        """One request of a batch, serialized (its body is the live call's, byte for byte)."""
        return self.wrap(custom_id, self.provider.body_bytes(model, request))

    @abstractmethod
    def wrap(self, custom_id: str, body: bytes) -> bytes:
        """One request of a batch from the live call's body (kept by the batcher until it sends)."""

    @abstractmethod
    def outcome(self, raw: bytes, model: str) -> LineOutcome | None:
        """One line of the results, parsed (``ValueError`` when it is not one)."""

    def upload(self, key: str, lines: Sequence[bytes]) -> str | None:
        """Send the lines ahead of :meth:`create` when the API wants a file; the upload's id."""
        return None

    def find_upload(self, key: str, *, since: float, size: int) -> str | None:
        """The upload of ``key`` made since ``since`` (unix s) of ``size`` bytes, if it exists."""
        return None

    @abstractmethod
    def create(self, key: str, model: str, upload: str | None, lines: Sequence[bytes]) -> RemoteBatch:
        """Start the batch (OpenAI: of the uploaded file; Anthropic: of the lines themselves)."""

    @abstractmethod
    def find(self, key: str, *, since: float, lines: int, known: Collection[str]) -> RemoteBatch | None:
        """The batch :meth:`create` made for ``key`` since ``since`` when its reply was lost, if any
        (``known``: provider batch ids the caller already owns, never a match)."""

    @abstractmethod
    def get(self, batch_id: str) -> RemoteBatch: ...

    @abstractmethod
    def cancel(self, batch_id: str) -> RemoteBatch: ...

    @abstractmethod
    def result_urls(self, remote: RemoteBatch) -> list[str]:
        """Where an ended batch's results are (OpenAI: its output and error files)."""

    def result_lines(self, remote: RemoteBatch) -> Iterator[bytes]:
        """The raw lines of an ended batch's results, in the order the provider sends them."""
        for url in self.result_urls(remote):
            yield from self.raw_lines(url)

    def results(self, remote: RemoteBatch, model: str) -> Iterator[LineOutcome]:
        """The lines of an ended batch, in the order the provider sends them."""
        for raw in self.result_lines(remote):
            outcome = self.outcome(raw, model)
            if outcome is not None:
                yield outcome

    def discard(self, remote: RemoteBatch | None, upload: str | None) -> None:  # noqa: B027 - optional
        """Delete what the batch left at the provider (uploaded and result files), best effort."""

    # --- shared -------------------------------------------------------------------------------------

    def answer(self, model: str, request: ChatRequest, outcome: LineOutcome) -> Completion:
        """A ``succeeded`` line's answer to ``request``, parsed by the live adapter (its checks,
        its errors: a content filter's stop is the same error it is live)."""
        return self.provider.answer(model, request, {}, outcome.body)

    def mapper(self, model: str = "") -> ErrorMapper:
        provider = self.provider

        def mapped(status: int, headers: Mapping[str, str], body: bytes) -> LLMQError:
            return provider.error_from_body(status, headers, body, model=model)

        return mapped

    def call(
        self, method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """One call of the batch API (its errors mapped like the live adapter's)."""
        _, content = self._http.call(
            method,
            url,
            headers={**self.provider.api_headers(), **(headers or {})},
            body=body,
            provider=self.name,
            error_mapper=self.mapper(),
        )
        return content

    def raw_lines(self, url: str) -> Iterator[bytes]:
        """A results body, streamed line by line (no size limit: a batch's results may be large)."""
        response = self._http.download(
            url, headers=self.provider.api_headers(), provider=self.name, error_mapper=self.mapper()
        )
        try:
            for raw in iter_lines(response.iter_bytes(), MAX_RESULT_LINE_BYTES):
                if raw.strip():
                    yield bytes(raw)
        finally:
            response.close()
