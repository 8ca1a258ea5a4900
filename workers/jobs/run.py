"""One run of one job: the state its model turns, tool loop, structured-output repair and ending share.

The pipeline (``workers/jobs/pipeline.py``) creates a :class:`JobRun` when it claims a job; the model
turns (``turn.py``), the tool loop (``toolloop.py``), the repair (``structured.py``) and the ending
(``ending.py``) all work on it, each from below the pipeline. Data only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import JsonValue

from workers.accounting.metered import Meter
from workers.contract import CompletionJob, CompletionResult, JobKeys, Message, PromptInfo, Tool, Usage
from workers.jobs.cachedrun import CachedRun
from workers.jobs.events import EventPublisher
from workers.llm.model import RunContext

__all__ = ["JobRun", "ToolLoopState"]


@dataclass
class ToolLoopState:
    """What the loop adds to the job's result, whichever way the job ends."""

    turns: int = 0
    messages: list[Message] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    #: What the model was sent on the last turn plus its answer, and the tools it was offered:
    #: a structured-output repair turn continues this conversation (``workers/jobs/structured.py``).
    conversation: list[Message] = field(default_factory=list)
    definitions: list[Tool] = field(default_factory=list)

    def add_usage(self, usage: Usage) -> None:
        self.usage += usage

    def fill(self, result: CompletionResult) -> None:
        result.turns = self.turns
        result.messages = list(self.messages)
        if self.turns:
            result.usage = self.usage.model_copy()


@dataclass
class JobRun:
    """One run of one job: what its turns, its tool loop, its repair and its ending share."""

    job: CompletionJob
    keys: JobKeys
    publisher: EventPublisher
    ctx: RunContext
    #: Monotonic start of the run (time to first delta is measured from it).
    started: float
    #: The claim token this run holds ("" once released, or when it is not this run's to release).
    token: str = ""
    meter: Meter | None = None
    #: The model that answered the last turn.
    model_used: str | None = None
    ttft_s: float | None = None
    #: The text streamed so far (kept in a failed or cancelled result).
    text_parts: list[str] = field(default_factory=list)
    #: Stops the upstream call now (set while a call runs; the claim heartbeat fires it when fenced).
    abort: Callable[[], None] | None = None
    #: Set when the worker's shutdown window ran out: the run stops and its job goes back to the queue.
    handed_back: bool = False
    #: Wall-clock start (queue time is measured against the job's ``submitted_at``).
    started_wall: float = 0.0
    #: The cancel key was set before this run claimed the job.
    cancelled_at_start: bool = False
    #: The published prompt version the messages were rendered from, if any.
    prompt: PromptInfo | None = None
    #: The structured-output check's parsed answer and repair turns.
    parsed: JsonValue | None = None
    repairs: int = 0
    #: The tool loop's turns, messages and summed usage (jobs naming worker tools).
    tools: ToolLoopState | None = None
    #: A job that asks to be cached: its key, and whether it leads its single flight.
    cached: CachedRun | None = None
