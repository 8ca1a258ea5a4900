"""Provider batch APIs as the simulator speaks them: OpenAI Batch (over its Files API) and Anthropic
Message Batches, with a configurable processing time, per-line faults and expiry.

Timing (wall clock, captured per batch when it is created from the simulator's config):

* a batch of *n* lines answers line *i* at ``created + batch_processing_s × (i + 1) / n``;
* it ends when every line is answered, or at ``created + batch_window_s`` (the provider's
  completion window), whichever comes first: the lines not answered by then are **expired**
  (OpenAI ``status: "expired"`` with ``batch_expired`` error lines; Anthropic ``expired`` results);
* a cancel ends it at once: lines not answered yet are cancelled (``batch_cancelled`` /
  ``canceled``); the status reads ``cancelling`` / ``canceling`` until the next poll.

Each answered line is the answer the live endpoint would give the same body (same deterministic
words, same usage), faults included, chosen per line like a live request's (the model suffix
``gpt-4o~503``, or ``--fault-rate``), keyed by batch and ``custom_id``. One fault exists only here:
``expire`` (the line expires however soon the batch ends). HTTP-error faults become error lines
(OpenAI: ``response.status_code`` and the API's error body; Anthropic: an ``errored`` result), a
``midstream`` fault the protocol's non-stream error. Results are computed once, when the batch
ends; Anthropic's are served in a shuffled (seeded) order, as the real API makes no promise.

Crash tests: ``batch_upload_delay_s`` and ``batch_create_delay_s`` hold the *reply* of an upload or
a batch creation after the file or batch exists, so a client killed meanwhile leaves an object it
never learned the id of (it must find it again by listing, or it sends a second batch).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from simulator.batchfiles import FileStore
from simulator.request import RequestError

__all__ = ["BatchEngine", "LineAnswer", "SimBatch"]

_ids = itertools.count(1)
#: What the real APIs accept in one batch.
OPENAI_MAX_LINES = 50_000
ANTHROPIC_MAX_REQUESTS = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OPENAI_ENDPOINTS = frozenset({"/v1/chat/completions"})


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """What the live endpoint would answer a line: ``status`` 200 and the body, an error status and
    the API's error body, or ``status`` 0: the line's ``expire`` fault."""

    status: int
    body: bytes


#: ``(api, request body, fault key) -> answer``: the simulator's own answering, as for a live request.
Answerer = Callable[[str, dict[str, Any], str], LineAnswer]


@dataclass
class SimBatch:
    id: str
    api: Literal["openai", "anthropic"]
    created_at: float
    #: ``(custom_id, body)`` per line, in input order.
    requests: list[tuple[str, dict[str, Any]]]
    processing_s: float
    window_s: float
    endpoint: str = ""
    input_file_id: str | None = None
    metadata: dict[str, Any] | None = None
    completion_window: str = "24h"
    cancel_requested_at: float | None = None
    cancel_seen: bool = False
    #: A batch OpenAI refused while validating its file (``status: "failed"``): the errors.
    failed: list[dict[str, Any]] | None = None
    ended_at: float | None = None
    ended_by: Literal["completed", "expired", "cancelled"] | None = None
    #: Per line, once ended: ``("answered", answer)``, ``("expired", None)`` or ``("cancelled", None)``.
    outcomes: list[tuple[str, LineAnswer | None]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None

    def done_at(self, index: int) -> float:
        n = len(self.requests)
        return self.created_at + self.processing_s * (index + 1) / n

    def answered_by(self, t: float) -> int:
        """Lines answered by time ``t`` (before the batch ended)."""
        return sum(1 for i in range(len(self.requests)) if self.done_at(i) <= t)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class BatchEngine:
    """The batches of both APIs, their results, and what they were asked (``stats``)."""

    def __init__(
        self,
        files: FileStore,
        answer: Answerer,
        *,
        config: Callable[[], tuple[float, float]],
        seed: int = 7,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files = files
        self._answer = answer
        #: ``() -> (processing_s, window_s)`` from the simulator's current config.
        self._config = config
        self._seed = seed
        self._clock = clock
        self.batches: dict[str, SimBatch] = {}
        self.stats: Counter[str] = Counter()
        #: How many times each (batch, custom_id) was answered: a test sees a line answered twice.
        self.answered: Counter[str] = Counter()

    # --- creation ---------------------------------------------------------------------------------

    def create_openai(self, payload: object) -> SimBatch:
        if not isinstance(payload, dict):
            raise RequestError("body must be a JSON object")
        file_id, endpoint = payload.get("input_file_id"), payload.get("endpoint")
        window = payload.get("completion_window")
        if not isinstance(file_id, str) or not file_id:
            raise RequestError("input_file_id: Field required")
        if endpoint not in OPENAI_ENDPOINTS:
            raise RequestError(f"endpoint: the simulator batches {sorted(OPENAI_ENDPOINTS)}, not {endpoint!r}")
        if window != "24h":
            raise RequestError("completion_window: only '24h' is supported")
        metadata = payload.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or any(not isinstance(v, str) for v in metadata.values())
        ):
            raise RequestError("metadata: at most 16 string values")
        stored = self.files.get(file_id)
        if stored.purpose != "batch":
            raise RequestError(f"File {file_id} has purpose {stored.purpose!r}, not 'batch'")
        requests, errors = _read_input(stored.content, endpoint)
        processing_s, window_s = self._config()
        batch = SimBatch(
            f"batch_sim{next(_ids):08d}",
            "openai",
            self._clock(),
            requests,
            processing_s,
            window_s,
            endpoint=endpoint,
            input_file_id=file_id,
            metadata=metadata,
            completion_window=window,
            failed=errors or None,
        )
        self.batches[batch.id] = batch
        self.stats["openai_batches"] += 1
        return batch

    def create_anthropic(self, payload: object) -> SimBatch:
        requests = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(requests, list) or not requests:
            raise RequestError("requests: at least one request is required")
        if len(requests) > ANTHROPIC_MAX_REQUESTS:
            raise RequestError(f"requests: at most {ANTHROPIC_MAX_REQUESTS} requests per batch")
        seen: set[str] = set()
        lines: list[tuple[str, dict[str, Any]]] = []
        for i, entry in enumerate(requests):
            if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
                raise RequestError(f"requests.{i}.params: Field required")
            custom_id = entry.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                raise RequestError(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if custom_id in seen:
                raise RequestError(f"requests: custom_id {custom_id!r} is used more than once")
            seen.add(custom_id)
            lines.append((custom_id, entry["params"]))
        processing_s, window_s = self._config()
        batch = SimBatch(f"msgbatch_sim{next(_ids):08d}", "anthropic", self._clock(), lines, processing_s, window_s)
        self.batches[batch.id] = batch
        self.stats["anthropic_batches"] += 1
        return batch

    def get(self, batch_id: str, api: str) -> SimBatch:
        batch = self.batches.get(batch_id)
        if batch is None or batch.api != api:
            raise RequestError(f"No such batch: {batch_id}", status=404, kind="not_found_error")
        return batch

    def cancel(self, batch: SimBatch) -> SimBatch:
        self._settle(batch)
        if batch.ended_at is None and batch.failed is None and batch.cancel_requested_at is None:
            batch.cancel_requested_at = self._clock()
            self.stats["cancels"] += 1
        return batch

    # --- progress -----------------------------------------------------------------------------------

    def _settle(self, batch: SimBatch) -> None:
        """End the batch if its time came (computing every line's outcome once)."""
        if batch.ended_at is not None or batch.failed is not None:
            return
        now = self._clock()
        if batch.cancel_requested_at is not None:
            end, why = batch.cancel_requested_at, "cancelled"
        else:
            finish = batch.done_at(len(batch.requests) - 1)
            expiry = batch.created_at + batch.window_s
            if now < min(finish, expiry):
                return
            end, why = (finish, "completed") if finish <= expiry else (expiry, "expired")
        outcomes: list[tuple[str, LineAnswer | None]] = []
        for i, (custom_id, body) in enumerate(batch.requests):
            if batch.done_at(i) <= end:
                answer = self._answer(batch.api, body, f"{batch.id}:{custom_id}")
                self.answered[f"{batch.id}:{custom_id}"] += 1
                self.stats["lines"] += 1
                outcomes.append(("answered", answer) if answer.status else ("expired", None))
            else:
                outcomes.append(("expired" if why == "expired" else "cancelled", None))
        batch.outcomes, batch.ended_at, batch.ended_by = outcomes, end, why  # type: ignore[assignment]
        if batch.api == "openai":
            self._write_openai_files(batch)

    def _write_openai_files(self, batch: SimBatch) -> None:
        ok: list[bytes] = []
        bad: list[bytes] = []
        for i, ((custom_id, _), (kind, answer)) in enumerate(zip(batch.requests, batch.outcomes, strict=True)):
            line: dict[str, Any] = {"id": f"batch_req_{batch.id[9:]}_{i:06d}", "custom_id": custom_id}
            if kind == "answered" and answer is not None:
                line["response"] = {
                    "status_code": answer.status,
                    "request_id": f"req_{batch.id[9:]}{i:06d}",
                    "body": json.loads(answer.body),
                }
                line["error"] = None
            else:
                code = "batch_expired" if kind == "expired" else "batch_cancelled"
                reason = "the completion window expired" if kind == "expired" else "the batch was cancelled"
                line["response"] = None
                line["error"] = {"code": code, "message": f"This request could not be executed before {reason}."}
            target = ok if line["response"] is not None and line["response"]["status_code"] == 200 else bad
            target.append(json.dumps(line).encode())
        if ok:
            batch.output_file_id = self.files.add(f"{batch.id}_output.jsonl", "batch_output", _jsonl(ok)).id
        if bad:
            batch.error_file_id = self.files.add(f"{batch.id}_error.jsonl", "batch_output", _jsonl(bad)).id

    # --- what the APIs show ---------------------------------------------------------------------

    def openai_object(self, batch: SimBatch) -> dict[str, Any]:
        self._settle(batch)
        created = int(batch.created_at)
        n = len(batch.requests)
        obj: dict[str, Any] = {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": created,
            "expires_at": int(batch.created_at + 86_400),
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": n, "completed": 0, "failed": 0},
            "metadata": batch.metadata,
        }
        if batch.failed is not None:
            obj.update(status="failed", in_progress_at=None, failed_at=created)
            obj["errors"] = {"object": "list", "data": batch.failed}
            obj["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
            return obj
        if batch.cancel_requested_at is not None:
            obj["cancelling_at"] = int(batch.cancel_requested_at)
        if batch.ended_at is None:
            obj["request_counts"]["completed"] = batch.answered_by(self._clock())
            return obj
        ended = int(batch.ended_at)
        done = sum(1 for kind, a in batch.outcomes if kind == "answered" and a is not None and a.status == 200)
        obj["request_counts"] = {"total": n, "completed": done, "failed": n - done}
        obj["output_file_id"], obj["error_file_id"] = batch.output_file_id, batch.error_file_id
        if batch.ended_by == "cancelled":
            if not batch.cancel_seen:  # the poll that asked sees it still winding down
                batch.cancel_seen = True
                obj.update(status="cancelling", output_file_id=None, error_file_id=None)
                return obj
            obj.update(status="cancelled", cancelled_at=ended)
        elif batch.ended_by == "expired":
            obj.update(status="expired", expired_at=ended)
        else:
            obj.update(status="completed", finalizing_at=ended, completed_at=ended)
        return obj

    def anthropic_object(self, batch: SimBatch, base_url: str) -> dict[str, Any]:
        self._settle(batch)
        n = len(batch.requests)
        counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        obj: dict[str, Any] = {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": counts,
            "ended_at": None,
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + 86_400),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancel_requested_at) if batch.cancel_requested_at else None,
            "results_url": None,
        }
        if batch.ended_at is None or (batch.ended_by == "cancelled" and not batch.cancel_seen):
            if batch.ended_at is not None:
                batch.cancel_seen = True
                obj["processing_status"] = "canceling"
            return obj
        counts["processing"] = 0
        for kind, answer in batch.outcomes:
            if kind == "answered" and answer is not None:
                counts["succeeded" if answer.status == 200 else "errored"] += 1
            else:
                counts["expired" if kind == "expired" else "canceled"] += 1
        obj.update(
            processing_status="ended",
            ended_at=_iso(batch.ended_at),
            results_url=f"{base_url}/v1/messages/batches/{batch.id}/results",
        )
        return obj

    def anthropic_results(self, batch: SimBatch) -> bytes:
        self._settle(batch)
        if batch.ended_at is None:
            raise RequestError(f"Message Batch {batch.id} has not ended yet; results are not available")
        lines: list[bytes] = []
        for (custom_id, _), (kind, answer) in zip(batch.requests, batch.outcomes, strict=True):
            result: dict[str, Any]
            if kind == "answered" and answer is not None and answer.status == 200:
                message = json.loads(answer.body)
                if isinstance(message.get("usage"), dict):
                    message["usage"]["service_tier"] = "batch"
                result = {"type": "succeeded", "message": message}
            elif kind == "answered" and answer is not None:
                result = {"type": "errored", "error": json.loads(answer.body)}
            else:
                result = {"type": "expired" if kind == "expired" else "canceled"}
            lines.append(json.dumps({"custom_id": custom_id, "result": result}, separators=(",", ":")).encode())
        random.Random(f"{self._seed}:{batch.id}").shuffle(lines)
        self.stats["result_downloads"] += 1
        return _jsonl(lines)

    def listing(self, api: str, query: dict[str, str], base_url: str) -> dict[str, Any]:
        """Newest first. OpenAI pages with ``after`` (limit 1-100, default 20); Anthropic with
        ``after_id``/``before_id`` (limit 1-1000, default 20)."""
        rows = [b for b in reversed(self.batches.values()) if b.api == api]
        most = 100 if api == "openai" else 1000
        raw = query.get("limit")
        try:
            limit = 20 if raw is None else int(raw)
        except ValueError:
            raise RequestError(f"limit: not an integer: {raw!r}") from None
        if not 1 <= limit <= most:
            raise RequestError(f"limit must be between 1 and {most}")
        ids = [b.id for b in rows]
        after = query.get("after" if api == "openai" else "after_id")
        before = query.get("before_id") if api == "anthropic" else None
        if after:
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        elif before:
            rows = rows[: ids.index(before)][-limit:] if before in ids else []
        page = rows[:limit]
        if api == "openai":
            data = [self.openai_object(b) for b in page]
            return {
                "object": "list",
                "data": data,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(rows) > limit,
            }
        return {
            "data": [self.anthropic_object(b, base_url) for b in page],
            "has_more": len(rows) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    def delete_anthropic(self, batch: SimBatch) -> dict[str, Any]:
        self._settle(batch)
        if batch.ended_at is None:
            raise RequestError(f"Message Batch {batch.id} is still in progress; cancel it before deleting it")
        del self.batches[batch.id]
        return {"id": batch.id, "type": "message_batch_deleted"}

    def as_json(self) -> dict[str, Any]:
        repeated = sum(1 for count in self.answered.values() if count > 1)
        counters = ("files", "openai_batches", "anthropic_batches", "lines", "cancels", "file_downloads")
        return {
            **{k: 0 for k in counters},
            **self.stats,
            "result_downloads": self.stats["result_downloads"],
            "lines_answered_twice": repeated,
        }


def _jsonl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _read_input(content: bytes, endpoint: str) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """An OpenAI batch input file: its ``(custom_id, body)`` lines, and the validation errors that
    fail the batch (OpenAI's ``errors.data``: code, message, line)."""
    requests: list[tuple[str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue

        def error(code: str, message: str, param: str | None = None, line: int = number) -> None:
            errors.append({"code": code, "message": message, "param": param, "line": line})

        try:
            data = json.loads(raw)
        except ValueError:
            error("invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(data, dict):
            error("invalid_json_line", "This line is not a JSON object.")
            continue
        custom_id, body = data.get("custom_id"), data.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            error("missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id")
            continue
        if custom_id in seen:
            error(
                "duplicate_custom_id", "The custom_id for this request is a duplicate of another request.", "custom_id"
            )
            continue
        if data.get("method") != "POST" or data.get("url") != endpoint:
            error(
                "invalid_url", f"The URL provided for this request does not match the batch endpoint {endpoint}.", "url"
            )
            continue
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            error("missing_required_parameter", "Missing required parameter: 'body.model'.", "body.model")
            continue
        if body.get("stream"):
            error("invalid_value", "Streaming is not supported in the Batch API.", "body.stream")
            continue
        seen.add(custom_id)
        models.add(body["model"].partition("~")[0])
        requests.append((custom_id, body))
    if len(models) > 1:
        errors.append(
            {
                "code": "mismatched_model",
                "message": "All requests in a batch must use the same model.",
                "param": "body.model",
                "line": None,
            }
        )
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "The batch input file is empty.", "param": None, "line": None})
    if len(requests) > OPENAI_MAX_LINES:
        errors.append(
            {
                "code": "too_many_requests",
                "message": f"A batch holds at most {OPENAI_MAX_LINES} requests.",
                "param": None,
                "line": None,
            }
        )
    return requests, errors
