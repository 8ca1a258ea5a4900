"""What the simulator counts: requests by path/model/job/outcome, and a capped request history.

The history records, for every answered request, when it started and ended and how (``ok``,
``cut``, ``midstream``, ``closed_early`` when the client went away first, ``error_<fault>``,
``invalid``), so a test can check that a cancelled job's upstream stream was closed promptly.
Memory is bounded: the history keeps the last :data:`MAX_HISTORY` records and ``by_job`` the
last :data:`MAX_JOBS` job ids.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

__all__ = ["MAX_HISTORY", "MAX_JOBS", "Record", "Stats"]

MAX_HISTORY = 10_000
MAX_JOBS = 50_000


#: Characters of each request's prompt text kept in its record.
PROMPT_CHARS = 4_000


@dataclass(slots=True)
class Record:
    path: str
    model: str
    job: str
    stream: bool
    fault: str
    started: float
    ended: float | None = None
    outcome: str = "open"
    #: The request's message texts joined by spaces (capped): what a test checks reached the provider.
    prompt: str = ""
    messages: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "model": self.model,
            "job": self.job,
            "stream": self.stream,
            "fault": self.fault,
            "started": self.started,
            "ended": self.ended,
            "outcome": self.outcome,
            "prompt": self.prompt,
            "messages": self.messages,
        }


@dataclass(slots=True)
class Stats:
    requests: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    by_job: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_fault: Counter[str] = field(default_factory=Counter)
    open_streams: int = 0
    closed_early: int = 0
    history: deque[Record] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))

    def count_request(self, path: str, job: str) -> None:
        self.requests += 1
        self.by_path[path] += 1
        if job:
            by_job = self.by_job
            if job not in by_job and len(by_job) >= MAX_JOBS:
                del by_job[next(iter(by_job))]
            by_job[job] += 1

    def begin(
        self, path: str, model: str, job: str, stream: bool, fault: str, *, prompt: str = "", messages: int = 0
    ) -> Record:
        record = Record(path, model, job, stream, fault, time.time(), prompt=prompt[:PROMPT_CHARS], messages=messages)
        self.history.append(record)
        if fault != "ok":
            self.by_fault[fault] += 1
        if stream:
            self.open_streams += 1
        return record

    def finish(self, record: Record, outcome: str) -> None:
        if record.ended is not None:
            return
        record.ended = time.time()
        record.outcome = outcome
        self.by_outcome[outcome] += 1
        if outcome == "closed_early":
            self.closed_early += 1
        if record.stream:
            self.open_streams -= 1

    def records(self, job: str | None = None, streams_only: bool = False) -> list[dict[str, object]]:
        return [r.as_json() for r in self.history if (job is None or r.job == job) and (r.stream or not streams_only)]

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_model": dict(self.by_model),
            "by_job": dict(self.by_job),
            "by_outcome": dict(self.by_outcome),
            "by_fault": dict(self.by_fault),
            "open_streams": self.open_streams,
            "closed_early": self.closed_early,
        }
