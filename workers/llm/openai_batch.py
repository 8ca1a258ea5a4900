"""OpenAI's Batch API over its Files API: upload a ``purpose=batch`` JSONL file, create the batch,
poll it, read its output and error files.

Wire facts kept here: an input line is ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body"}`` (one model per file); ``completion_window`` is ``"24h"``; a
batch carries up to 16 ``metadata`` strings (ours: ``llmq_batch``, our key, by which a batch whose
creation reply was lost is found again); statuses ``validating``, ``in_progress``, ``finalizing``
(running), ``cancelling``, ``completed``, ``expired``, ``cancelled`` (ended) and ``failed`` (the file
did not validate: ``errors.data``); an output line is ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}``: a body with ``status_code`` 200 is the
``chat.completion`` a live call gets, another status carries the API's error body, and
``response: null`` with ``error.code`` ``batch_expired`` / ``batch_cancelled`` (or another code)
means the request never ran. Output order is not guaranteed: lines are matched by ``custom_id``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from workers.llm.batchapi import FIND_SKEW_S, BatchAPI, BatchState, LineOutcome, RemoteBatch
from workers.llm.errormap import error_in_batch
from workers.llm.httpclient import ErrorMapper, HTTPClient
from workers.llm.openai import OpenAIProvider

__all__ = [
    "KEY_FIELD",
    "OpenAIBatchAPI",
    "OpenAIBatchObject",
    "OpenAIFileObject",
    "OutputLine",
    "outcome_of",
    "parse_output_line",
]

ENDPOINT = "/v1/chat/completions"
#: The metadata key holding our batch key.
KEY_FIELD = "llmq_batch"
_STATES: dict[str, BatchState] = {
    "validating": "running",
    "in_progress": "running",
    "finalizing": "running",
    "cancelling": "cancelling",
    "completed": "ended",
    "expired": "ended",
    "cancelled": "ended",
    "failed": "failed",
}
_NOT_RUN = {"batch_expired": "expired", "batch_cancelled": "cancelled"}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestCounts(_Wire):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(_Wire):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(_Wire):
    data: list[BatchError] = []


class OpenAIBatchObject(_Wire):
    id: str
    status: str
    created_at: int
    endpoint: str | None = None
    input_file_id: str | None = None
    completion_window: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts | None = None
    metadata: dict[str, str] | None = None
    errors: BatchErrors | None = None


class OpenAIFileObject(_Wire):
    id: str
    filename: str = ""
    purpose: str = ""
    bytes: int | None = None
    created_at: int = 0


class LineResponse(_Wire):
    status_code: int
    request_id: str | None = None
    body: Any = None


class LineError(_Wire):
    code: str | None = None
    message: str | None = None


class OutputLine(_Wire):
    id: str | None = None
    custom_id: str
    response: LineResponse | None = None
    error: LineError | None = None


def parse_output_line(raw: bytes | str) -> OutputLine:
    """One line of an output or error file (``ValueError`` when it is not one)."""
    return OutputLine.model_validate_json(raw)


def outcome_of(line: OutputLine, mapper: ErrorMapper, *, provider: str = "openai", model: str = "") -> LineOutcome:
    """What happened to one request: answered (200), failed (another status, mapped by ``mapper``,
    the live adapter's, or an error code), or never run (expired, cancelled)."""
    response = line.response
    if response is not None and response.status_code == 200:
        return LineOutcome(line.custom_id, "succeeded", body=json.dumps(response.body).encode())
    if response is not None:
        headers = {"x-request-id": response.request_id} if response.request_id else {}
        error = mapper(response.status_code, headers, json.dumps(response.body).encode())
        return LineOutcome(line.custom_id, "errored", error=error)
    code = line.error.code if line.error is not None else None
    if code in _NOT_RUN:
        return LineOutcome(line.custom_id, _NOT_RUN[code])  # type: ignore[arg-type]
    message = (line.error.message if line.error is not None else None) or "the batch reported no response"
    return LineOutcome(
        line.custom_id, "errored", error=error_in_batch(provider=provider, model=model, message=message, code=code)
    )


def remote_of(obj: OpenAIBatchObject) -> RemoteBatch:
    counts = obj.request_counts or RequestCounts()
    reason = None
    if obj.status == "failed":
        errors = obj.errors.data if obj.errors is not None else []
        reason = "; ".join(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "") for e in errors[:3])
    return RemoteBatch(
        obj.id,
        _STATES.get(obj.status, "running"),
        obj.status,
        float(obj.created_at),
        counts.total,
        counts.completed + counts.failed,
        tuple(f for f in (obj.output_file_id, obj.error_file_id) if f),
        reason or None,
    )


class OpenAIBatchAPI(BatchAPI):
    max_lines = 50_000
    uploads = True

    def __init__(self, provider: OpenAIProvider, http: HTTPClient) -> None:
        super().__init__(provider, http)
        self._base = provider.base_url

    def wrap(self, custom_id: str, body: bytes) -> bytes:
        head = b'{"custom_id": ' + json.dumps(custom_id).encode() + b', "method": "POST", "url": "' + ENDPOINT.encode()
        return head + b'", "body": ' + body + b"}"

    def outcome(self, raw: bytes, model: str) -> LineOutcome:
        return outcome_of(parse_output_line(raw), self.mapper(model), provider=self.name, model=model)

    @staticmethod
    def filename(key: str) -> str:
        return f"llmq-{key}.jsonl"

    def upload(self, key: str, lines: Sequence[bytes]) -> str:
        boundary = f"llmq{uuid.uuid4().hex}"
        content = b"".join(line + b"\n" for line in lines)
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{self.filename(key)}"\r\n'
                "Content-Type: application/jsonl\r\n\r\n"
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        raw = self.call(
            "POST",
            f"{self._base}/files",
            body=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        return OpenAIFileObject.model_validate_json(raw).id

    def find_upload(self, key: str, *, since: float, size: int) -> str | None:
        name, after = self.filename(key), None
        while True:
            query = "purpose=batch&limit=100&order=desc" + (f"&after={quote(after)}" if after else "")
            page = json.loads(self.call("GET", f"{self._base}/files?{query}"))
            files = [OpenAIFileObject.model_validate(f) for f in page.get("data") or []]
            for f in files:
                if f.filename == name and f.bytes in (None, size):
                    return f.id
            if not files or not page.get("has_more") or files[-1].created_at < since - FIND_SKEW_S:
                return None
            after = files[-1].id

    def create(self, key: str, model: str, upload: str | None, lines: Sequence[bytes]) -> RemoteBatch:
        if upload is None:
            raise ValueError("an OpenAI batch needs its uploaded file")
        body = {
            "input_file_id": upload,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": {KEY_FIELD: key},
        }
        raw = self.call("POST", f"{self._base}/batches", body=json.dumps(body).encode(), headers=_JSON)
        return remote_of(OpenAIBatchObject.model_validate_json(raw))

    def find(self, key: str, *, since: float, lines: int, known: Collection[str]) -> RemoteBatch | None:
        after = None
        while True:
            page = json.loads(
                self.call("GET", f"{self._base}/batches?limit=100" + (f"&after={quote(after)}" if after else ""))
            )
            batches = [OpenAIBatchObject.model_validate(b) for b in page.get("data") or []]
            for b in batches:
                if (b.metadata or {}).get(KEY_FIELD) == key and b.id not in known:
                    return remote_of(b)
            if not batches or not page.get("has_more") or batches[-1].created_at < since - FIND_SKEW_S:
                return None
            after = batches[-1].id

    def get(self, batch_id: str) -> RemoteBatch:
        return remote_of(OpenAIBatchObject.model_validate_json(self.call("GET", f"{self._base}/batches/{batch_id}")))

    def cancel(self, batch_id: str) -> RemoteBatch:
        raw = self.call("POST", f"{self._base}/batches/{batch_id}/cancel")
        return remote_of(OpenAIBatchObject.model_validate_json(raw))

    def result_urls(self, remote: RemoteBatch) -> list[str]:
        return [f"{self._base}/files/{file_id}/content" for file_id in remote.results]

    def discard(self, remote: RemoteBatch | None, upload: str | None) -> None:
        for file_id in (upload, *(remote.results if remote is not None else ())):
            if file_id:
                try:
                    self.call("DELETE", f"{self._base}/files/{file_id}")
                except Exception:
                    continue


_JSON = {"content-type": "application/json"}
