"""A request's scheduling class and concurrency key: from the body, else a header, else the endpoint's default.

``/v1/chat/completions`` runs ``interactive`` by default (someone is waiting on the answer);
``/v1/jobs`` takes the job's own ``priority`` (``normal`` unless set). Either may be overridden with
the ``X-LLMQ-Priority`` header (``interactive``, ``normal`` or ``bulk``) and given a concurrency key
with ``X-LLMQ-Concurrency-Key``; a field in the body wins over a header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from producers.gateway.errors import GatewayError
from workers.contract.schedule import PRIORITIES, priority_error

__all__ = ["KEY_HEADER", "PRIORITY_HEADER", "scheduling_fields"]

PRIORITY_HEADER = "x-llmq-priority"
KEY_HEADER = "x-llmq-concurrency-key"


def scheduling_fields(headers: Mapping[str, str], body: Mapping[str, Any], default: str | None) -> dict[str, Any]:
    """The ``priority`` and ``concurrency_key`` job fields the request sets (only those it sets)."""
    fields: dict[str, Any] = {}
    priority = body.get("priority")
    if priority is None:
        header = headers.get(PRIORITY_HEADER)
        if header is not None:
            priority = header.strip().lower()
            if priority not in PRIORITIES:
                raise GatewayError(400, f"{PRIORITY_HEADER}: {priority_error(header)}", param=PRIORITY_HEADER)
    fields["priority"] = priority if priority is not None else default
    key = body.get("concurrency_key")
    if key is None and headers.get(KEY_HEADER):
        key = headers[KEY_HEADER].strip()
    if key is not None:
        fields["concurrency_key"] = key
    return {k: v for k, v in fields.items() if v is not None}
