"""Following the job that leads a single flight: its stream becomes ours, its answer ours too.

A follower reads the leader's replay Stream (``XREAD BLOCK``, from the start, so it misses nothing)
and republishes what a consumer of its own job would have seen: the deltas, the tool loop's calls
and results (and a ``repair`` when the leader's answer starts over), under its own job id and
sequence. It returns the leader's
result when the leader ends ``done``; it returns None when the leader ended otherwise (an error,
a cancel: the next job should try) or is gone: no claim (its lease ran out, or it was re-queued)
and no stored result. It never waits past its own deadline, and its own cancel stops it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from workers.contract import (
    CompletionResult,
    DeltaEvent,
    JobKeys,
    RepairEvent,
    StartEvent,
    ToolCallEvent,
    ToolResultEvent,
    parse_event,
)
from workers.jobs.events import EventPublisher
from workers.llm.errors import DeadlineExceededError, JobCancelledError

__all__ = ["Follower"]

#: How long one XREAD waits before the follower checks the leader is alive and itself not cancelled.
BLOCK_MS = 500


@dataclass
class Follower:
    client: redis.Redis
    #: This (the follower's) job's id and publisher.
    job_id: str
    publisher: EventPublisher
    #: True once this job's consumer asked to cancel it.
    cancelled: Callable[[], bool]
    #: Seconds left before this job's deadline (None: none).
    remaining: Callable[[], float | None]
    block_ms: int = BLOCK_MS
    #: The leader's text republished as this job's deltas since the last ``repair`` (a leader that
    #: sent no deltas, ``stream: false``, leaves it empty: the ending sends the rest).
    shown: str = ""

    def follow(self, leader_id: str) -> CompletionResult | None:
        """The leader's result once it is ``done``; None if it failed, was cancelled or is gone."""
        leader = JobKeys(leader_id)
        last = "0-0"
        run: int | None = None
        sent = False  # deltas of the leader's current run already republished
        while True:
            if self.publisher.cancelled or self.cancelled():
                raise JobCancelledError("cancelled while waiting for an identical job's answer")
            left = self.remaining()
            if left is not None and left <= 0:
                raise DeadlineExceededError("the job's deadline passed while an identical job was answering")
            block = self.block_ms if left is None else max(1, min(self.block_ms, int(left * 1000)))
            reply: Any = self.client.xread({leader.events: last}, count=256, block=block)
            entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []
            for entry_id, fields in entries:
                last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                event = parse_event(fields[b"e"])
                if isinstance(event, StartEvent):
                    if run is not None and event.run != run and sent:
                        # the leader's job started again (it was redelivered): its earlier text is void
                        self._restart(["the answer being shared started over"])
                        sent = False
                    run = event.run
                elif isinstance(event, DeltaEvent):
                    self.publisher.delta(event.text)
                    self.shown += event.text
                    sent = True
                elif isinstance(event, RepairEvent):
                    self._restart(event.errors)
                    sent = False
                elif isinstance(event, ToolResultEvent) or (
                    isinstance(event, ToolCallEvent) and event.turn is not None
                ):
                    # the leader's tool loop, shown as this job's own would show it (the answer's
                    # client tool calls come with this job's ending)
                    self.publisher.emit(event.model_copy(update={"job_id": self.job_id}))
                elif event.type == "done":
                    return event.result
                elif event.type in ("error", "cancelled"):
                    return self._gone(sent)
            if not entries:
                state, result = self._leader_state(leader)
                if state == "gone":
                    return self._gone(sent)
                if state == "ended":  # its Stream is gone but its result is not
                    if result is not None and result.status == "succeeded":
                        return result
                    return self._gone(sent)

    def _gone(self, sent: bool) -> CompletionResult | None:
        """The leader will not answer: this job calls itself, and what it showed of the leader's
        text is void (a consumer joining deltas starts over at the ``repair`` event)."""
        if sent:
            self._restart(["the identical job being followed failed; answering anew"])
        return None

    def _restart(self, errors: list[str]) -> None:
        self.shown = ""
        self.publisher.emit(RepairEvent(job_id=self.job_id, seq=0, attempt=1, errors=errors))

    def _leader_state(self, leader: JobKeys) -> tuple[str, CompletionResult | None]:
        """``running`` (it holds its claim), ``ended`` (its result is stored) or ``gone``."""
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(leader.claim)
        pipe.get(leader.result)
        claim, raw = pipe.execute()
        if raw:
            return "ended", CompletionResult.model_validate_json(raw)
        return ("running" if claim else "gone"), None
