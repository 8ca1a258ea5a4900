"""Replaying dead letters: a failed job's kept request, submitted again as a copy with a new id.

Each original gets at most one copy: the copy's id is recorded in the original's day of history
(``HSETNX`` on the day's replays hash) *before* the copy is submitted, so replaying the same set
twice, or from two places at once, sends each job once. A replay that died between the record
and the submit is finished by the next one (it finds the record, but neither a registration nor a
history of the copy, and submits the copy under the recorded id; the producer's registration makes
that submit idempotent too). A submit the producer refuses (the prompt it names is gone, say, or
Redis is full) removes the record, so a later replay may try again; a refusal for now
(:class:`~producers.errors.SubmitRefusedError`) is raised on, so the caller stops replaying and says so.

The copy is the original request with a new id, ``replay_of`` set to the original's id, and no
submission time, reply list or trace context of the original's.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal

from producers.errors import InvalidJobError, SubmitRefusedError
from producers.history import Call, HistoryEntry, get_steps, request_steps
from workers.contract import JobKeys, new_job_id
from workers.contract.history import HistoryKeys

__all__ = ["ReplayOutcome", "replay_steps"]

Outcome = Literal["submitted", "would_submit", "already_replayed", "not_replayable", "refused"]
#: Fields of the original that are not carried over to its copy.
_DROPPED = ("submitted_at", "reply_to", "traceparent", "tracestate")


@dataclass(frozen=True)
class ReplayOutcome:
    original: str
    outcome: Outcome
    #: The copy's id (submitted now, earlier, or the one a dry run found already recorded).
    copy: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.original, "outcome": self.outcome, "copy": self.copy, "detail": self.detail}


def replay_steps(entry: HistoryEntry, *, now: float, dry_run: bool = False) -> Generator[Call, Any, ReplayOutcome]:
    """The steps of replaying one history entry (run by ``producers.history.drive``/``adrive``)."""
    original = entry.summary.id
    if not entry.summary.replayable:
        why = f"it {entry.summary.status}; only failed jobs are kept for replay"
        return ReplayOutcome(original, "not_replayable", detail=why)
    if dry_run:
        if entry.replayed_as:
            return ReplayOutcome(original, "already_replayed", entry.replayed_as)
        return ReplayOutcome(original, "would_submit")
    request = yield from request_steps(entry)
    if request is None:
        return ReplayOutcome(original, "not_replayable", detail="its request is no longer kept")
    replays = HistoryKeys(entry.day).replays
    candidate = new_job_id()
    created, recorded = yield ("pipe", [("hsetnx", replays, original, candidate), ("hget", replays, original)])
    copy = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
    if not created:
        (registered,) = yield ("pipe", [("exists", JobKeys(copy).meta)])
        ended = yield from get_steps(copy, now)
        if registered or ended is not None:
            return ReplayOutcome(original, "already_replayed", copy)
        # an earlier replay recorded this copy but died before submitting it: submit it now
    data = request.model_dump(mode="json", exclude_none=True)
    for name in _DROPPED:
        data.pop(name, None)
    data.update(id=copy, replay_of=original)
    try:
        handle = yield ("submit", data)
    except InvalidJobError as exc:
        if created:
            yield ("pipe", [("hdel", replays, original)])
        return ReplayOutcome(original, "refused", detail=str(exc))
    except SubmitRefusedError:  # Redis full, for now: no copy was registered, so none is recorded
        if created:
            yield ("pipe", [("hdel", replays, original)])  # HDEL works at maxmemory
        raise
    if not handle.enqueued:
        return ReplayOutcome(original, "already_replayed", copy)
    return ReplayOutcome(original, "submitted", copy)
