"""Where provider batches live in Redis: the lines waiting per model, each batch's step, each job's line.

Two sides share this state. A job that goes to a provider batch is *parked* by its run
(``workers/jobs/batched.py``): its line's body and its payload go into the job's own hash
(:attr:`~workers.contract.JobKeys.batch`, the job's hash tag), its id into the waiting list of its
group (``provider:model``). The batcher (``workers/runtime/batcher.py``) seals a group's lines into a
batch, sends it, polls it and files each line's result back into the job's hash, then sends the job
to the queue again, where its next run ends it from that result.

Every step is written before and after it is taken, so a batcher killed anywhere resumes where it
was (the upload and the creation are found again at the provider, never made twice); every write
is idempotent, so a step taken twice changes nothing. The batcher's keys share the hash tag
``{pbatch}``, so its scripts stay on one Redis Cluster slot:

``llmq:{pbatch}:groups``
    sorted set: group -> when its oldest waiting line was parked (unix s)
``llmq:{pbatch}:group:<group>``
    list: the ids of the jobs waiting in the group, in parking order
``llmq:{pbatch}:members``
    set: the ids of the jobs waiting or in a batch (a redelivered park adds nothing twice)
``llmq:{pbatch}:active``
    sorted set: batch key -> when the batcher next looks at it (unix s)
``llmq:{pbatch}:b:<key>``
    hash: the batch: ``group``, ``provider``, ``model``, ``state`` (:data:`BatchStep`), ``created``,
    ``lines``, ``upload``, ``upload_since``, ``remote``, ``create_since``, ``status``
``llmq:{pbatch}:b:<key>:jobs`` / ``:lines``
    lists: the job ids sealed into the batch / of its lines as sent (line *i* = ``<key>-<i>``)
``llmq:{pbatch}:b:<key>:deadlines``
    sorted set: job id -> its deadline (unix s), for the lines that have one
``llmq:{pbatch}:remotes:<provider>``
    set: the provider batch ids we made (a batch found after a crash is never one of these)
``llmq:{pbatch}:lock``
    string: the batcher at work (one at a time across the workers; a lease)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis
from redis.typing import EncodableT

from workers.connections.pipescript import queue_script
from workers.contract import JobKeys
from workers.contract.presence import BATCH_INTAKE_KEY

__all__ = [
    "PREFIX",
    "BatchRecord",
    "BatchStep",
    "BatchStore",
    "Filed",
    "JobLine",
    "LineState",
]

PREFIX = "llmq:{pbatch}"
#: A job's place: handed over by its producer (not looked at yet), waiting for a batch, in one, answered, sent live instead, dropped before sending.
LineState = Literal["new", "pending", "sent", "done", "live", "dropped"]
#: A batch's step: sealed (its lines chosen), prepared (its lines fixed), uploading/uploaded (OpenAI's
#: file), creating, running (at the provider), finished (every line filed back).
BatchStep = Literal["sealed", "prepared", "uploading", "uploaded", "creating", "running", "finished"]
#: How long a finished batch's record is kept (what ``llmq`` and a curious operator can read).
FINISHED_TTL_S = 7 * 86_400

# KEYS: members, group list, groups. ARGV: job id, group, now. Adds a job to its group once.
_PARK_LUA = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[2])
return 1
"""

# KEYS: groups, group list, batch hash, batch jobs, active. ARGV: group, key, max lines, now,
# provider, model. Moves up to max lines of the group into a new batch, atomically.
_SEAL_LUA = """
local ids = redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1)
if #ids == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('LTRIM', KEYS[2], #ids, -1)
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
end
for i = 1, #ids, 1000 do
  redis.call('RPUSH', KEYS[4], unpack(ids, i, math.min(i + 999, #ids)))
end
redis.call('HSET', KEYS[3], 'group', ARGV[1], 'state', 'sealed', 'created', ARGV[4],
  'provider', ARGV[5], 'model', ARGV[6], 'lines', #ids)
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[2])
return #ids
"""

# KEYS: a job's batch hash. ARGV: the states it may be in (comma-separated), then field/value pairs.
# Changes the hash only from one of those states; 1 if it did.
_MOVE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
local allowed = false
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == state then allowed = true end
end
if not allowed then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""

# KEYS: a job's batch hash, meta, events, channel, result, cancel. ARGV: ttl, events maxlen, the start
# event's JSON, then the line's field/value pairs. A line handed over by its producer (state 'new', the
# job not ended nor cancelled) becomes 'pending' with its fields, its job 'batched', and its start event
# is published, all at once (1); 0 when it was not 'new' (taken already) or the job ended; 2 when the
# job was cancelled (left 'new': sent on, its run ends it).
_TAKE_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'new' then return 0 end
if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[6]) == 1 then return 2 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'state', 'pending', unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'batched')
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '0-1', 'e', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('PUBLISH', KEYS[4], ARGV[3])
return 1
"""

# KEYS: a job's batch hash. A line still 'new' becomes 'live', marked sent on unstarted ('onward'):
# its run starts it and runs it live (the batcher decided it is not for a batch).
_ONWARD_LUA = """
if redis.call('HGET', KEYS[1], 'state') == 'new' then
  return redis.call('HSET', KEYS[1], 'state', 'live', 'onward', '1')
end
return 0
"""

# KEYS: a job's batch hash, its result. ARGV: the line's result kind, its raw line. Files the result into
# a line still 'sent'; returns {filed (0/1), the line's state, whether the job ended, group, payload,
# reservation}: what the batcher does next with it, in the same round trip.
_FILE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
local filed = 0
if state == 'sent' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'kind', ARGV[1], 'raw', ARGV[2])
  state = 'done'
  filed = 1
end
local f = redis.call('HMGET', KEYS[1], 'group', 'job', 'reservation')
return {filed, state or '', redis.call('EXISTS', KEYS[2]), f[1] or '', f[2] or '', f[3] or ''}
"""

# KEYS: a job's batch hash, its cancel key. Its line and whether its cancel was asked.
_READ_LUA = """
return {redis.call('HGETALL', KEYS[1]), redis.call('EXISTS', KEYS[2])}
"""

# KEYS: lock. ARGV: owner, lease ms. Takes or renews the lock; 1 when this owner holds it.
_LOCK_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lock. ARGV: owner. Frees the lock if this owner holds it.
_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class JobLine:
    """A job's batch hash, read."""

    job_id: str
    state: LineState
    group: str = ""
    key: str = ""
    index: int = -1
    #: The line's result: a kind of :data:`~workers.llm.batchapi.LineKind` and the raw result line
    #: (empty when the provider reported nothing for it: expired).
    kind: str = ""
    raw: bytes = b""
    #: The live call's body, the job's payload JSON, the batch-price reservation JSON.
    body: bytes = b""
    job: bytes = b""
    reservation: str = ""
    deadline: float | None = None
    #: Handed over by its producer, then sent to the queue unstarted by the batcher (its run starts it).
    onward: bool = False

    @classmethod
    def parse(cls, job_id: str, fields: Mapping[bytes, bytes]) -> JobLine | None:
        if not fields or b"state" not in fields:
            return None
        deadline = fields.get(b"deadline")
        return cls(
            job_id=job_id,
            state=_text(fields[b"state"]),  # type: ignore[arg-type]  # written by this module only
            group=_text(fields.get(b"group", b"")),
            key=_text(fields.get(b"key", b"")),
            index=int(fields.get(b"index", b"-1")),
            kind=_text(fields.get(b"kind", b"")),
            raw=fields.get(b"raw", b""),
            body=fields.get(b"body", b""),
            job=fields.get(b"job", b""),
            reservation=_text(fields.get(b"reservation", b"")),
            deadline=float(deadline) if deadline else None,
            onward=fields.get(b"onward") == b"1",
        )


@dataclass(frozen=True, slots=True)
class Filed:
    """A result filed into its job's line (:meth:`BatchStore.file_results`)."""

    #: The line was ``sent`` and is ``done`` now, with this result.
    filed: bool
    #: The job had ended already (a stored result).
    ended: bool
    #: The line as it is now (state, group, payload, reservation); None when it is gone.
    line: JobLine | None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch's hash, read."""

    key: str
    group: str
    provider: str
    model: str
    state: BatchStep
    created: float
    lines: int
    upload: str = ""
    upload_since: float = 0.0
    remote: str = ""
    create_since: float = 0.0

    @classmethod
    def parse(cls, key: str, fields: Mapping[bytes, bytes]) -> BatchRecord | None:
        if not fields or b"state" not in fields:
            return None

        def get(name: str) -> str:
            return _text(fields.get(name.encode(), b""))

        return cls(
            key=key,
            group=get("group"),
            provider=get("provider"),
            model=get("model"),
            state=get("state"),  # type: ignore[arg-type]  # written by this module only
            created=float(get("created") or 0),
            lines=int(get("lines") or 0),
            upload=get("upload"),
            upload_since=float(get("upload_since") or 0),
            remote=get("remote"),
            create_since=float(get("create_since") or 0),
        )


class BatchStore:
    """The batches' Redis state (module docstring); ``clock``: unix seconds."""

    def __init__(self, client: redis.Redis, *, clock: Any = time.time) -> None:
        self.redis = client
        self._clock = clock
        self._park = client.register_script(_PARK_LUA)
        self._seal = client.register_script(_SEAL_LUA)
        self._move = client.register_script(_MOVE_LUA)
        self._lock = client.register_script(_LOCK_LUA)
        self._unlock = client.register_script(_UNLOCK_LUA)
        self._take = client.register_script(_TAKE_LUA)
        self._onward = client.register_script(_ONWARD_LUA)
        self._file = client.register_script(_FILE_LUA)
        self._read = client.register_script(_READ_LUA)

    # --- keys ---------------------------------------------------------------------------------------

    intake = BATCH_INTAKE_KEY
    groups = f"{PREFIX}:groups"
    members = f"{PREFIX}:members"
    active = f"{PREFIX}:active"
    lock_key = f"{PREFIX}:lock"

    @staticmethod
    def group_list(group: str) -> str:
        return f"{PREFIX}:group:{group}"

    @staticmethod
    def batch_hash(key: str) -> str:
        return f"{PREFIX}:b:{key}"

    @staticmethod
    def remotes(provider: str) -> str:
        return f"{PREFIX}:remotes:{provider}"

    # --- a job's line (the pipeline's side) ---------------------------------------------------------

    def line(self, job_id: str) -> JobLine | None:
        return JobLine.parse(job_id, self.redis.hgetall(JobKeys(job_id).batch))  # type: ignore[arg-type]

    def park(
        self,
        job_id: str,
        *,
        group: str,
        body: bytes,
        job: bytes,
        reservation: str,
        deadline: float | None,
        ttl_s: int,
    ) -> None:
        """Write the job's line, then add it to its group's waiting lines (once, however often the
        run is repeated: a redelivery finds the line written and adds nothing twice)."""
        keys = JobKeys(job_id)
        fields: dict[EncodableT, EncodableT] = {"state": "pending", "group": group, "body": body, "job": job}
        fields["reservation"] = reservation
        if deadline is not None:
            fields["deadline"] = repr(deadline)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.batch, mapping=fields)
        pipe.expire(keys.batch, ttl_s)
        # the job's own keys outlive the batch's window (its subscribers read them at the end);
        # ttl_s includes the results' TTL, so this only lengthens them (no EXPIRE GT: Redis 6.2 has none)
        for key in (keys.meta, keys.events):
            pipe.expire(key, ttl_s)
        pipe.hset(keys.meta, "state", "batched")
        # after the line, in the same round trip: a run that dies in between left no id without its line
        self._park(
            keys=[self.members, self.group_list(group), self.groups], args=[job_id, group, self._clock()], client=pipe
        )
        pipe.execute()

    def move(self, job_id: str, allowed: Iterable[LineState], fields: Mapping[str, Any]) -> bool:
        """Change the job's line only from one of the ``allowed`` states; True if it did."""
        flat: list[Any] = [",".join(allowed)]
        for name, value in fields.items():
            flat += [name, value]
        return bool(self._move(keys=[JobKeys(job_id).batch], args=flat))

    def move_on(self, pipe: Any, job_id: str, allowed: Iterable[LineState], fields: Mapping[str, Any]) -> None:
        """:meth:`move`, queued on ``pipe``."""
        flat: list[Any] = [",".join(allowed)]
        for name, value in fields.items():
            flat += [name, value]
        queue_script(pipe, self._move, [JobKeys(job_id).batch], flat)

    # --- the batcher's side ---------------------------------------------------------------------

    def idle(self) -> bool:
        """No line waits and no batch is under way (one round trip, no write)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.groups)
        pipe.zcard(self.active)
        pipe.llen(self.intake)
        waiting, active, handed = pipe.execute()
        return not waiting and not active and not handed

    # --- the producers' hand-over ---------------------------------------------------------------

    def handed(self, limit: int) -> list[str]:
        """The first ``limit`` ids on the intake list (left there until :meth:`took` them)."""
        return [_text(j) for j in self.redis.lrange(self.intake, 0, limit - 1)]

    def took(self, count: int) -> None:
        """The first ``count`` ids of the intake list are dealt with."""
        self.redis.ltrim(self.intake, count, -1)

    def take(self, rows: Sequence[tuple[str, Mapping[str, Any], bytes]], *, ttl_s: int, maxlen: int) -> list[int]:
        """Lines handed over, taken: ``(job id, line fields, start event JSON)`` each made
        ``pending`` with its start event published (:data:`_TAKE_LUA`), one round trip; per row
        1 if it was, 0 (taken already, or its job ended) or 2 (its job was cancelled)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, fields, start in rows:
            keys = JobKeys(job_id)
            flat: list[Any] = [ttl_s, maxlen, start]
            for name, value in fields.items():
                flat += [name, value]
            script_keys = [keys.batch, keys.meta, keys.events, keys.channel, keys.result, keys.cancel]
            queue_script(pipe, self._take, script_keys, flat)
        return [int(n) for n in pipe.execute()] if rows else []

    def park_ids(self, rows: Sequence[tuple[str, str]]) -> None:
        """``(job id, group)`` pairs added to their groups' waiting lines (once each), one round trip."""
        if not rows:
            return
        pipe = self.redis.pipeline(transaction=False)
        now = self._clock()
        for job_id, group in rows:
            queue_script(pipe, self._park, [self.members, self.group_list(group), self.groups], [job_id, group, now])
        pipe.execute()

    def send_on(self, job_ids: Sequence[str]) -> None:
        """Mark the lines of jobs about to be sent to the queue, still ``new``, ``live`` and
        ``onward`` (their runs start them and run them live; one a run took meanwhile stays)."""
        if job_ids:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                queue_script(pipe, self._onward, [JobKeys(job_id).batch])
            pipe.execute()

    def hand_back(self, job_ids: Sequence[str]) -> None:
        """Put ids on the intake list again, at its end (taken at a later pass)."""
        if job_ids:
            self.redis.rpush(self.intake, *job_ids)

    def take_lock(self, owner: str, lease_s: float) -> bool:
        return bool(self._lock(keys=[self.lock_key], args=[owner, max(1, int(lease_s * 1000))]))

    def free_lock(self, owner: str) -> None:
        self._unlock(keys=[self.lock_key], args=[owner])

    def due_groups(self, *, max_age_s: float, max_lines: int) -> list[str]:
        """The groups to send now: their oldest line waited ``max_age_s``, or they are full."""
        now = self._clock()
        waiting = [_text(g) for g in self.redis.zrange(self.groups, 0, -1)]
        if not waiting:
            return []
        old = {_text(g) for g in self.redis.zrangebyscore(self.groups, "-inf", now - max_age_s)}
        pipe = self.redis.pipeline(transaction=False)
        for group in waiting:
            pipe.llen(self.group_list(group))
        sizes = pipe.execute()
        return [g for g, n in zip(waiting, sizes, strict=True) if g in old or int(n) >= max_lines]

    def seal(self, group: str, key: str, *, max_lines: int, provider: str, model: str) -> int:
        """Move up to ``max_lines`` of the group's waiting lines into batch ``key``; how many."""
        keys = [self.groups, self.group_list(group), self.batch_hash(key), f"{self.batch_hash(key)}:jobs", self.active]
        return int(self._seal(keys=keys, args=[group, key, max_lines, self._clock(), provider, model]))

    def due_batches(self) -> list[str]:
        return [_text(k) for k in self.redis.zrangebyscore(self.active, "-inf", self._clock())]

    def batch(self, key: str) -> BatchRecord | None:
        return BatchRecord.parse(key, self.redis.hgetall(self.batch_hash(key)))  # type: ignore[arg-type]

    def update(self, key: str, **fields: EncodableT) -> None:
        mapping: dict[EncodableT, EncodableT] = {name: value for name, value in fields.items()}
        self.redis.hset(self.batch_hash(key), mapping=mapping)

    def next_look(self, key: str, after_s: float) -> None:
        self.redis.zadd(self.active, {key: self._clock() + after_s})

    def sealed_jobs(self, key: str) -> list[str]:
        return [_text(j) for j in self.redis.lrange(f"{self.batch_hash(key)}:jobs", 0, -1)]

    def sent_lines(self, key: str) -> list[str]:
        return [_text(j) for j in self.redis.lrange(f"{self.batch_hash(key)}:lines", 0, -1)]

    def lines_of(self, job_ids: Sequence[str]) -> list[JobLine | None]:
        """Each job's line and whether its cancel was asked, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(JobKeys(job_id).batch)
        return [JobLine.parse(j, f) for j, f in zip(job_ids, pipe.execute(), strict=True)]

    def lines_and_cancels(self, job_ids: Sequence[str]) -> tuple[list[JobLine | None], list[bool]]:
        """Each job's line and whether its cancel was asked, one command per job, one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            keys = JobKeys(job_id)
            queue_script(pipe, self._read, [keys.batch, keys.cancel])
        lines: list[JobLine | None] = []
        cancels: list[bool] = []
        for job_id, (flat, cancel) in zip(job_ids, pipe.execute(), strict=True):
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            lines.append(JobLine.parse(job_id, fields))
            cancels.append(bool(cancel))
        return lines, cancels

    def bodies(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """Each job's line body (the live call's), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(JobKeys(job_id).batch, "body")
        return list(pipe.execute())

    def cancelled(self, job_ids: Sequence[str]) -> list[bool]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(JobKeys(job_id).cancel)
        return [bool(n) for n in pipe.execute()]

    def fix_lines(self, key: str, job_ids: Sequence[str], deadlines: Mapping[str, float]) -> None:
        """The batch's lines, as they will be sent (written once; :meth:`prepared` after)."""
        base = self.batch_hash(key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(f"{base}:lines", f"{base}:deadlines")
        for start in range(0, len(job_ids), 1000):
            pipe.rpush(f"{base}:lines", *job_ids[start : start + 1000])
        if deadlines:
            pipe.zadd(f"{base}:deadlines", dict(deadlines))
        pipe.hset(base, mapping={"state": "prepared", "lines": len(job_ids)})
        pipe.execute()

    def approaching(self, key: str, before: float) -> list[str]:
        """The lines of batch ``key`` whose deadline comes before ``before`` (unix s)."""
        return [_text(j) for j in self.redis.zrangebyscore(f"{self.batch_hash(key)}:deadlines", "-inf", before)]

    def forget_deadlines(self, key: str, job_ids: Sequence[str]) -> None:
        if job_ids:
            self.redis.zrem(f"{self.batch_hash(key)}:deadlines", *job_ids)

    def known_remotes(self, provider: str) -> set[str]:
        return {_text(r) for r in self.redis.smembers(self.remotes(provider))}

    def add_remote(self, provider: str, remote: str) -> None:
        self.redis.sadd(self.remotes(provider), remote)

    def finish(self, key: str, job_ids: Sequence[str]) -> None:
        """Every line is filed back: the batch leaves the active set, its jobs the members."""
        base = self.batch_hash(key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(base, "state", "finished")
        pipe.zrem(self.active, key)
        for start in range(0, len(job_ids), 1000):
            pipe.srem(self.members, *job_ids[start : start + 1000])
        for name in (base, f"{base}:jobs", f"{base}:lines", f"{base}:deadlines"):
            pipe.expire(name, FINISHED_TTL_S)
        pipe.execute()

    def file_results(self, rows: Sequence[tuple[str, str, bytes]]) -> list[Filed]:
        """File ``(job id, kind, raw)`` results into lines still ``sent`` (one round trip); per row
        what was done and what the line is now."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, kind, raw in rows:
            keys = JobKeys(job_id)
            queue_script(pipe, self._file, [keys.batch, keys.result], [kind, raw])
        out: list[Filed] = []
        for (job_id, _, _), reply in zip(rows, pipe.execute(), strict=True):
            filed, state, ended, group, job, reservation = reply
            line = None
            if state:
                line = JobLine(job_id, _text(state), group=_text(group), job=job, reservation=_text(reservation))  # type: ignore[arg-type]
            out.append(Filed(bool(filed), bool(ended), line))
        return out

    def payloads(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The jobs' payloads (what their runs parked), to send them to the queue again."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(JobKeys(job_id).batch, "job")
        return [json.loads(raw) if raw else None for raw in pipe.execute()]
