"""Job history: what every ended job leaves behind for ``LLMQ_HISTORY_DAYS``, and where.

A worker writes a job's history in the same script call that stores its result and publishes its
terminal event (``workers/jobs/store.py``), so an ended job is always indexed. Everything of one
UTC day (the day the job ended) lives under that day's hash tag, ``llmq:history:{YYYY-MM-DD}:...``:
each day is one Redis Cluster slot, expires as a whole (``EXPIREAT`` the end of the day plus the
retention), and a query reads one day per script call (:data:`HISTORY_QUERY_LUA`).

Per day: a hash of summaries (job id -> :class:`JobSummary` JSON), sorted sets of job ids scored
by the time the job ended (all jobs; per tenant, status, model and error type), a hash of the
requests of failed jobs (job id -> the :class:`~workers.contract.job.CompletionJob` JSON, what a
replay re-submits) and a hash of replays (original id -> the id of its copy).
"""

from __future__ import annotations

import datetime as dt
import re

from pydantic import Field

from workers.contract.base import WireModel
from workers.contract.result import Attempt, ErrorInfo, Timings, Usage

__all__ = [
    "HISTORY_QUERY_LUA",
    "HistoryKeys",
    "JobSummary",
    "RequestSummary",
    "day_of",
    "day_start",
    "days_back",
    "expire_at",
]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: Index names are the values themselves (tenant, model, error type); anything outside this set
#: (a model id with a space, say) is replaced so a key name never holds control characters.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:~/@+-]")


def day_of(ts: float) -> str:
    """The UTC day (``YYYY-MM-DD``) of unix time ``ts``."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def day_start(day: str) -> float:
    """Unix time of 00:00 UTC of ``day``."""
    return dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()


def expire_at(day: str, days: int) -> int:
    """When ``day``'s history expires: ``days`` whole days after that day ended."""
    return int(day_start(day)) + (days + 1) * 86_400


def days_back(now: float, days: int, since: float | None = None) -> list[str]:
    """The days a query reads, newest first: today and the ``days`` before it (fewer with ``since``)."""
    out = []
    for back in range(days + 1):
        day = day_of(now - back * 86_400)
        if since is not None and day_start(day) + 86_400 <= since:
            break
        out.append(day)
    return out


def _name(value: str) -> str:
    return _UNSAFE.sub("_", value)[:200]


class HistoryKeys:
    """The history keys of one UTC day (one hash tag, one Redis Cluster slot)."""

    __slots__ = ("all", "base", "day", "jobs", "replays", "requests")

    PREFIX = "llmq:history:"

    def __init__(self, day: str) -> None:
        if not _DAY.match(day):
            raise ValueError(f"not a day: {day!r} (YYYY-MM-DD)")
        self.day = day
        self.base = f"{self.PREFIX}{{{day}}}"
        #: Hash: job id -> JobSummary JSON.
        self.jobs = f"{self.base}:jobs"
        #: Sorted set: every job id that ended this day, scored by when it ended (unix seconds).
        self.all = f"{self.base}:all"
        #: Hash: job id -> the CompletionJob JSON of a failed job (what a replay re-submits).
        self.requests = f"{self.base}:requests"
        #: Hash: original job id -> id of the copy a replay submitted (one copy per original).
        self.replays = f"{self.base}:replays"

    def tenant(self, tenant: str) -> str:
        return f"{self.base}:tenant:{_name(tenant)}"

    def status(self, status: str) -> str:
        return f"{self.base}:status:{_name(status)}"

    def model(self, model: str) -> str:
        return f"{self.base}:model:{_name(model)}"

    def error(self, error_type: str) -> str:
        return f"{self.base}:error:{_name(error_type)}"


class RequestSummary(WireModel):
    """What was asked, without message text."""

    messages: int = 0
    #: ``name@version`` of a published prompt, if the job used one.
    prompt: str | None = None
    template: bool = False
    tools: list[str] = Field(default_factory=list)
    max_tokens: int | None = None
    stream: bool = True
    deadline_s: float | None = None
    response_format: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    #: The webhook the job named, if any.
    webhook: str | None = None


class JobSummary(WireModel):
    """One ended job in the history (``llmq jobs show``, ``GET /v1/jobs/{id}``): no message text."""

    id: str
    tenant: str
    status: str
    #: The model the job asked for (``provider:model`` or a route alias).
    model: str
    model_used: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    error: ErrorInfo | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    cost_usd: float | None = None
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    submitted_at: float | None = None
    #: When the terminal event was written (unix seconds): the job's score in the day's indexes.
    finished_at: float
    #: The run (execution) that ended the job: above 1 after a redelivery.
    run: int = 1
    trace_id: str | None = None
    #: The original job, when this job is a replay's copy.
    replay_of: str | None = None
    #: Whether the request was kept (failed jobs: a replay can re-submit it).
    replayable: bool = False
    request: RequestSummary = Field(default_factory=RequestSummary)


# One day's page of a history query (one hash tag: every key is of the same day).
# KEYS: jobs hash, replays hash, then the sets to intersect (at least one; the day's ``all`` when
# there is no filter). ARGV: max score ("+inf" or "(<score>" exclusive), min score, limit, scan cap.
# The smallest set drives: its members are read newest first and kept when every other set has
# them. Returns {cursor, id, score, summary, replayed_as, ...}: cursor is "" when the day is done,
# else "(<score>" to continue from (the scan cap bounds the work of one call).
HISTORY_QUERY_LUA = """
local sets = {}
for i = 3, #KEYS do sets[#sets + 1] = KEYS[i] end
local driver, smallest = 1, -1
for i, key in ipairs(sets) do
  local n = redis.call('ZCARD', key)
  if n == 0 then return {''} end
  if smallest < 0 or n < smallest then driver, smallest = i, n end
end
local limit, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {''}
local found, scanned, max = 0, 0, ARGV[1]
while found < limit and scanned < cap do
  local page = redis.call('ZREVRANGEBYSCORE', sets[driver], max, ARGV[2], 'WITHSCORES', 'LIMIT', 0, 200)
  if #page == 0 then return out end
  for j = 1, #page, 2 do
    local id, score = page[j], page[j + 1]
    scanned = scanned + 1
    max = '(' .. score
    local keep = true
    for i, key in ipairs(sets) do
      if i ~= driver and not redis.call('ZSCORE', key, id) then keep = false break end
    end
    if keep then
      out[#out + 1] = id
      out[#out + 1] = score
      out[#out + 1] = redis.call('HGET', KEYS[1], id) or ''
      out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
      found = found + 1
      if found >= limit then break end
    end
  end
  if #page < 400 and found < limit then return out end
end
out[1] = max
return out
"""
