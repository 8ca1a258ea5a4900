"""Anthropic's Message Batches: create (the requests in the body), poll ``processing_status``,
stream the results.

Wire facts kept here: a request is ``{"custom_id", "params"}`` where ``params`` is a Messages
body (``custom_id``: 1-64 of ``[a-zA-Z0-9_-]``); ``processing_status`` is ``in_progress``,
``canceling`` or ``ended``; ``request_counts`` has ``processing``, ``succeeded``, ``errored``,
``canceled`` and ``expired``; once ended, ``results_url`` serves JSONL in any order, one line per
request: ``{"custom_id", "result": {"type": "succeeded", "message"}}``, ``errored`` with
``error: {"type": "error", "error": {"type", "message"}}`` (no HTTP status: classified by its
type, like the same error of a live call), ``canceled`` or ``expired``. Batches carry no
metadata: one whose creation reply was lost is found again by its size and creation time.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from workers.llm.anthropic import AnthropicProvider
from workers.llm.batchapi import FIND_SKEW_S, BatchAPI, BatchState, LineOutcome, RemoteBatch
from workers.llm.errormap import error_in_batch
from workers.llm.httpclient import HTTPClient

__all__ = ["AnthropicBatchAPI", "MessageBatch", "ResultLine", "outcome_of", "parse_result_line"]

_STATES: dict[str, BatchState] = {"in_progress": "running", "canceling": "cancelling", "ended": "ended"}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestCounts(_Wire):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        return self.processing + self.succeeded + self.errored + self.canceled + self.expired


class MessageBatch(_Wire):
    id: str
    type: Literal["message_batch"] = "message_batch"
    processing_status: str
    request_counts: RequestCounts = RequestCounts()
    created_at: datetime
    ended_at: datetime | None = None
    expires_at: datetime | None = None
    archived_at: datetime | None = None
    cancel_initiated_at: datetime | None = None
    results_url: str | None = None


class ErrorDetail(_Wire):
    type: str | None = None
    message: str | None = None


class ErrorResponse(_Wire):
    type: str | None = "error"
    error: ErrorDetail = ErrorDetail()
    request_id: str | None = None


class Succeeded(_Wire):
    type: Literal["succeeded"]
    message: dict[str, Any]


class Errored(_Wire):
    type: Literal["errored"]
    error: ErrorResponse


class Canceled(_Wire):
    type: Literal["canceled"]


class Expired(_Wire):
    type: Literal["expired"]


class ResultLine(_Wire):
    custom_id: str
    result: Annotated[Succeeded | Errored | Canceled | Expired, Field(discriminator="type")]


def parse_result_line(raw: bytes | str) -> ResultLine:
    """One line of a batch's results (``ValueError`` when it is not one)."""
    return ResultLine.model_validate_json(raw)


def outcome_of(line: ResultLine, *, provider: str = "anthropic", model: str = "") -> LineOutcome:
    result = line.result
    if isinstance(result, Succeeded):
        return LineOutcome(line.custom_id, "succeeded", body=json.dumps(result.message).encode())
    if isinstance(result, Errored):
        detail = result.error.error
        error = error_in_batch(
            provider=provider,
            model=model,
            message=detail.message or "the batch reported an error",
            kind=detail.type,
            request_id=result.error.request_id,
        )
        return LineOutcome(line.custom_id, "errored", error=error)
    return LineOutcome(line.custom_id, "cancelled" if isinstance(result, Canceled) else "expired")


def remote_of(batch: MessageBatch) -> RemoteBatch:
    counts = batch.request_counts
    return RemoteBatch(
        batch.id,
        _STATES.get(batch.processing_status, "running"),
        batch.processing_status,
        batch.created_at.timestamp(),
        counts.total,
        counts.succeeded + counts.errored,
        (batch.results_url,) if batch.results_url else (),
    )


class AnthropicBatchAPI(BatchAPI):
    max_lines = 100_000

    def __init__(self, provider: AnthropicProvider, http: HTTPClient) -> None:
        super().__init__(provider, http)
        self._url = provider.base_url + "/v1/messages/batches"

    def wrap(self, custom_id: str, body: bytes) -> bytes:
        head = b'{"custom_id": ' + json.dumps(custom_id).encode() + b', "params": '
        return head + body + b"}"

    def outcome(self, raw: bytes, model: str) -> LineOutcome:
        return outcome_of(parse_result_line(raw), provider=self.name, model=model)

    def create(self, key: str, model: str, upload: str | None, lines: Sequence[bytes]) -> RemoteBatch:
        body = b'{"requests": [' + b", ".join(lines) + b"]}"
        raw = self.call("POST", self._url, body=body, headers={"content-type": "application/json"})
        return remote_of(MessageBatch.model_validate_json(raw))

    def find(self, key: str, *, since: float, lines: int, known: Collection[str]) -> RemoteBatch | None:
        after = None
        while True:
            page = json.loads(
                self.call("GET", f"{self._url}?limit=100" + (f"&after_id={quote(after)}" if after else ""))
            )
            batches = [MessageBatch.model_validate(b) for b in page.get("data") or []]
            for b in batches:
                if b.created_at.timestamp() >= since - FIND_SKEW_S and b.request_counts.total == lines:
                    if b.id not in known:
                        return remote_of(b)
            if not batches or not page.get("has_more") or batches[-1].created_at.timestamp() < since - FIND_SKEW_S:
                return None
            after = batches[-1].id

    def get(self, batch_id: str) -> RemoteBatch:
        return remote_of(MessageBatch.model_validate_json(self.call("GET", f"{self._url}/{batch_id}")))

    def cancel(self, batch_id: str) -> RemoteBatch:
        return remote_of(MessageBatch.model_validate_json(self.call("POST", f"{self._url}/{batch_id}/cancel")))

    def result_urls(self, remote: RemoteBatch) -> list[str]:
        return list(remote.results)
