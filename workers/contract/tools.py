"""What workers publish about their tools, and where: read by producers and ``llmq tools list``.

Each worker process writes one :class:`WorkerTools` JSON under :func:`worker_tools_key` with a
short TTL it keeps refreshing, and adds its id to the :data:`TOOL_WORKERS_KEY` set. A worker that
dies simply stops refreshing: its key expires, and it no longer counts as having its tools. A
reader takes the set's members and ``MGET``s their keys; a missing key is a dead worker.
"""

from __future__ import annotations

from pydantic import Field, JsonValue

from workers.contract.base import WireModel

__all__ = ["TOOL_WORKERS_KEY", "ToolInfo", "WorkerTools", "worker_tools_key"]

#: Set of the ids of workers that published a tool registry (some may be dead: check their key).
TOOL_WORKERS_KEY = "llmq:tools:workers"


def worker_tools_key(worker_id: str) -> str:
    """The key holding one worker's :class:`WorkerTools` JSON (expires unless refreshed)."""
    return f"llmq:tools:worker:{worker_id}"


class ToolInfo(WireModel):
    name: str
    description: str | None = None
    #: JSON Schema (Draft 2020-12) of the arguments.
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    timeout_s: float
    max_invalid: int
    idempotent: bool = False
    sequential: bool = False


class WorkerTools(WireModel):
    worker: str
    tools: list[ToolInfo] = Field(default_factory=list)
    #: Unix time of the last refresh.
    published_at: float = 0.0
