"""Reading the job history the workers write (``workers/contract/history.py``): list, show, requests.

The query logic is written once, as generators that yield Redis calls and receive their replies
(:func:`list_steps`, :func:`get_steps`); :class:`JobHistory` drives them with a sync client (the
CLI), :class:`AsyncJobHistory` with an asyncio one (the gateway). A list reads one day per script
call, newest first, each call bounded in the entries it scans.

Which days exist is asked of Redis (one round trip), not derived from the reader's own
``LLMQ_HISTORY_DAYS``: the workers' retention decides what is kept, and a CLI or gateway configured
with fewer (or more) days, or a retention changed since, still sees exactly what is there. That is
one ``EXISTS`` per day of the longest retention (367): a reader remembers the answer for the days
before yesterday for :data:`DAYS_TTL_S` (:class:`KnownDays`), since only today and yesterday (a
worker's clock a little behind) can gain history; the gateway's status reads then ask two.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis

from workers.contract import CompletionJob, JobKeys
from workers.contract.history import HISTORY_QUERY_LUA, HistoryKeys, JobSummary, day_of, days_back
from workers.contract.webhooks import DeliveryAttempt, DeliveryRecord

__all__ = [
    "AsyncJobHistory",
    "HistoryEntry",
    "HistoryQuery",
    "JobHistory",
    "KnownDays",
    "adrive",
    "drive",
    "parse_since",
]

#: Entries one script call may scan (the script runs inside Redis: its work stays small).
SCAN_CAP = 5_000
#: How far back a reader looks for days of history: the longest retention settings allow.
MAX_DAYS_BACK = 366
#: How long a reader trusts what it found about the days before yesterday (seconds of its clock).
DAYS_TTL_S = 60.0
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_since(text: str, now: float | None = None) -> float:
    """``2h``, ``30m``, ``7d``, ``1w`` (ago) or an ISO date/time (UTC unless it says) -> unix time."""
    now = time.time() if now is None else now
    match = _SINCE.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (2h, 30m, 7d) nor an ISO date/time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@dataclass(frozen=True)
class HistoryQuery:
    tenant: str | None = None
    status: str | None = None
    model: str | None = None
    error: str | None = None
    #: Only jobs that ended at or after this unix time.
    since: float | None = None
    #: Only jobs that ended before this unix time (the next page's cursor).
    before: float | None = None
    limit: int = 50


@dataclass(frozen=True)
class HistoryEntry:
    summary: JobSummary
    #: The UTC day the job ended (its history's day).
    day: str
    #: The id of the copy a replay submitted for this job, if any.
    replayed_as: str | None = None


#: One step's I/O: ``("script", keys, args)`` (the history query), ``("pipe", [(method, *args), ...])``
#: (Redis commands in one round trip; the reply is their list of replies) or ``("submit", job dict)``
#: (the reply is the submit's handle).
Call = tuple[Any, ...]


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _filter_sets(keys: HistoryKeys, query: HistoryQuery) -> list[str]:
    sets = []
    if query.tenant:
        sets.append(keys.tenant(query.tenant))
    if query.status:
        sets.append(keys.status(query.status))
    if query.model:
        sets.append(keys.model(query.model))
    if query.error:
        sets.append(keys.error(query.error))
    return sets or [keys.all]


class KnownDays:
    """What a reader found about the days before yesterday: which held history, as of when. Days
    there only expire (as a whole): a day it names that expired since reads as empty, and no day
    older than yesterday gains history, so for :data:`DAYS_TTL_S` only today and yesterday are asked."""

    def __init__(self, ttl_s: float = DAYS_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._today: str | None = None
        self._at = 0.0
        self._older: list[str] = []

    def older(self, today: str, now: float) -> list[str] | None:
        """The days before yesterday that held history, newest first, if known and fresh."""
        if self._today != today or not 0 <= now - self._at < self.ttl_s:
            return None
        return self._older

    def remember(self, today: str, now: float, older: list[str]) -> None:
        self._today, self._at, self._older = today, now, older


def day_steps(
    now: float, since: float | None = None, known: KnownDays | None = None
) -> Generator[Call, Any, list[str]]:
    """The days that hold history (from ``since`` on), newest first: one pipelined ``EXISTS`` per day,
    or (``known`` fresh) for today and yesterday only."""
    candidates = days_back(now, MAX_DAYS_BACK, since)
    recent, rest = candidates[:2], candidates[2:]
    today = day_of(now)
    older = known.older(today, now) if known is not None else None
    if older is not None:
        asked = recent
    elif known is None:
        asked = candidates
    else:  # every older day, whatever ``since``: what is remembered serves any later query
        asked = recent + days_back(now, MAX_DAYS_BACK)[2:]
    replies = yield ("pipe", [("exists", HistoryKeys(day).all) for day in asked])
    held = [day for day, exists in zip(asked, replies, strict=True) if exists]
    if older is None:
        older = [day for day in held if day not in recent]
        if known is not None:
            known.remember(today, now, older)
    wanted = set(rest)
    return [day for day in held if day in recent] + [day for day in older if day in wanted]


def list_steps(
    query: HistoryQuery, now: float, known: KnownDays | None = None
) -> Generator[Call, Any, list[HistoryEntry]]:
    found: list[HistoryEntry] = []
    for day in (yield from day_steps(now, query.since, known)):
        keys = HistoryKeys(day)
        sets = _filter_sets(keys, query)
        cursor = f"({query.before!r}" if query.before is not None else "+inf"
        low = repr(query.since) if query.since is not None else "-inf"
        while cursor and len(found) < query.limit:
            args = [cursor, low, query.limit - len(found), SCAN_CAP]
            reply = yield ("script", [keys.jobs, keys.replays, *sets], args)
            cursor = _text(reply[0])
            for at in range(1, len(reply), 4):
                raw = reply[at + 2]
                if not raw:
                    continue  # indexed but its summary is gone (a partial expiry): skip it
                summary = JobSummary.model_validate_json(raw)
                found.append(HistoryEntry(summary, day, _text(reply[at + 3]) or None))
        if len(found) >= query.limit:
            break
    return found


def get_steps(job_id: str, now: float, known: KnownDays | None = None) -> Generator[Call, Any, HistoryEntry | None]:
    day_list = yield from day_steps(now, known=known)
    if not day_list:
        return None
    calls = [(HistoryKeys(d).jobs, job_id) for d in day_list] + [(HistoryKeys(d).replays, job_id) for d in day_list]
    replies = yield ("pipe", [("hget", key, field) for key, field in calls])
    for index, day in enumerate(day_list):
        raw = replies[index]
        if raw:
            copy = _text(replies[len(day_list) + index]) or None
            return HistoryEntry(JobSummary.model_validate_json(raw), day, copy)
    return None


def drive(steps: Generator[Call, Any, Any], client: redis.Redis, script: Any, submit: Any = None) -> Any:
    """Run ``steps`` with a synchronous Redis client (``submit``: a ``Client.submit``)."""
    try:
        call = next(steps)
        while True:
            kind = call[0]
            try:
                if kind == "script":
                    reply = script(keys=call[1], args=call[2])
                elif kind == "submit":
                    reply = submit(call[1])
                else:
                    pipe = client.pipeline(transaction=False)
                    for method, *args in call[1]:
                        getattr(pipe, method)(*args)
                    reply = pipe.execute()
            except Exception as exc:  # the steps decide (a refused submit is an outcome)
                call = steps.throw(exc)
                continue
            call = steps.send(reply)
    except StopIteration as done:
        return done.value


async def adrive(steps: Generator[Call, Any, Any], client: aredis.Redis, script: Any, submit: Any = None) -> Any:
    """Run ``steps`` with an asyncio Redis client (``submit``: an ``AsyncClient.submit``)."""
    try:
        call = next(steps)
        while True:
            kind = call[0]
            try:
                if kind == "script":
                    reply = await script(keys=call[1], args=call[2])
                elif kind == "submit":
                    reply = await submit(call[1])
                else:
                    pipe = client.pipeline(transaction=False)
                    for method, *args in call[1]:
                        getattr(pipe, method)(*args)
                    reply = await pipe.execute()
            except Exception as exc:  # the steps decide (a refused submit is an outcome)
                call = steps.throw(exc)
                continue
            call = steps.send(reply)
    except StopIteration as done:
        return done.value


def request_steps(entry: HistoryEntry) -> Generator[Call, Any, CompletionJob | None]:
    (raw,) = yield ("pipe", [("hget", HistoryKeys(entry.day).requests, entry.summary.id)])
    return CompletionJob.model_validate_json(raw) if raw else None


def delivery_steps(job_id: str) -> Generator[Call, Any, dict[str, Any] | None]:
    """The job's webhook delivery (``workers/contract/webhooks.py``: record without its body, and
    the attempts' log), or None for a job without a webhook."""
    keys = JobKeys(job_id)
    raw, entries = yield ("pipe", [("hgetall", keys.webhook), ("lrange", keys.webhook_log, 0, -1)])
    if not raw:
        return None
    record = DeliveryRecord.model_validate({_text(k): _text(v) for k, v in raw.items() if _text(k) != "body"})
    attempts = [DeliveryAttempt.model_validate_json(e).model_dump(exclude_none=True) for e in entries]
    return {**record.model_dump(exclude_none=True), "log": attempts}


class JobHistory:
    """The history, read with a synchronous Redis client (the CLI). ``days`` is the reader's
    ``LLMQ_HISTORY_DAYS``: 0 reads nothing (history off here); any other value reads every day the
    workers' retention kept."""

    def __init__(self, client: redis.Redis, *, days: int = 7, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.days = days
        self._clock = clock
        self.script = client.register_script(HISTORY_QUERY_LUA)
        self.known = KnownDays()

    def list(self, query: HistoryQuery) -> list[HistoryEntry]:
        """Ended jobs matching every filter given, newest first, at most ``query.limit``."""
        if self.days < 1:
            return []
        found: list[HistoryEntry] = drive(list_steps(query, self._clock(), self.known), self.redis, self.script)
        return found

    def get(self, job_id: str) -> HistoryEntry | None:
        if self.days < 1:
            return None
        entry: HistoryEntry | None = drive(get_steps(job_id, self._clock(), self.known), self.redis, self.script)
        return entry

    def request(self, entry: HistoryEntry) -> CompletionJob | None:
        """The kept request of a failed job (what a replay re-submits), or None."""
        job: CompletionJob | None = drive(request_steps(entry), self.redis, self.script)
        return job

    def delivery(self, job_id: str) -> dict[str, Any] | None:
        """The job's webhook delivery record and log (see :func:`delivery_steps`)."""
        found: dict[str, Any] | None = drive(delivery_steps(job_id), self.redis, self.script)
        return found


class AsyncJobHistory:
    """The history, read with an asyncio Redis client (the gateway); ``days`` as :class:`JobHistory`'s."""

    def __init__(self, client: aredis.Redis, *, days: int = 7, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.days = days
        self._clock = clock
        self.script = client.register_script(HISTORY_QUERY_LUA)
        self.known = KnownDays()

    async def list(self, query: HistoryQuery) -> list[HistoryEntry]:
        if self.days < 1:
            return []
        steps = list_steps(query, self._clock(), self.known)
        found: list[HistoryEntry] = await adrive(steps, self.redis, self.script)
        return found

    async def get(self, job_id: str) -> HistoryEntry | None:
        if self.days < 1:
            return None
        steps = get_steps(job_id, self._clock(), self.known)
        entry: HistoryEntry | None = await adrive(steps, self.redis, self.script)
        return entry

    async def request(self, entry: HistoryEntry) -> CompletionJob | None:
        job: CompletionJob | None = await adrive(request_steps(entry), self.redis, self.script)
        return job

    async def delivery(self, job_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await adrive(delivery_steps(job_id), self.redis, self.script)
        return found
