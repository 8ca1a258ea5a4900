"""JSON Schemas of everything on the wire, generated from the contract's models.

``llmq schemas --write docs/schemas`` writes them; ``tests/test_protocol_docs.py`` fails when the
checked-in files differ from what the models generate now, so a change of the contract comes with
its schemas (and ``docs/protocol.md`` names them). Jobs are described as a producer may send them
(validation: defaults may be left out); results, events, summaries and webhook bodies as they are
written (serialization: every field present).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from workers.contract.events import StreamEvent
from workers.contract.history import JobSummary
from workers.contract.job import CompletionJob
from workers.contract.result import CompletionResult
from workers.contract.webhooks import DeliveryAttempt, WebhookPayload

__all__ = ["SCHEMAS", "json_schemas", "rendered"]

BASE_ID = "https://llmqueue.dev/schemas/"
#: file name -> (what, mode)
SCHEMAS: dict[str, tuple[Any, Literal["validation", "serialization"]]] = {
    "job.json": (CompletionJob, "validation"),
    "result.json": (CompletionResult, "serialization"),
    "event.json": (StreamEvent, "serialization"),
    "job_summary.json": (JobSummary, "serialization"),
    "webhook_payload.json": (WebhookPayload, "serialization"),
    "webhook_attempt.json": (DeliveryAttempt, "serialization"),
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema (draft 2020-12), one per wire object."""
    out = {}
    for name, (what, mode) in SCHEMAS.items():
        if isinstance(what, type) and issubclass(what, BaseModel):
            schema = what.model_json_schema(mode=mode)
        else:
            schema = TypeAdapter(what).json_schema(mode=mode)
            schema.setdefault("title", "StreamEvent")
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": BASE_ID + name,
            **schema,
        }
    return out


def rendered(schema: dict[str, Any]) -> str:
    """A schema as its file holds it (stable key order, one trailing newline)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
