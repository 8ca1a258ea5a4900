"""A job's state in Redis on the worker side: the run claim, cancellation and the stored result.

At-least-once delivery (late acks) means a job can arrive twice: after a worker crash (it must run
again) or through a broker hiccup while the first run is still going (it must not). The claim is
a lease (``SET NX PX``) holding a token of the run, renewed by every event flush and by the worker's
claim heartbeat (``workers/jobs/heartbeat.py``); a job whose result is already stored is never run
again, and a job claimed by a live worker is not run twice at once. A crashed worker's lease
simply expires, so the redelivered job runs (as run 2, which consumers can see on its events).
The token fences a run: every later write of that run (flush, result, charge) checks that the
claim still holds it, so a run that was paused past its lease cannot write into the job.

A first delivery's run (its message never delivered before) does not send :meth:`JobStore.claim`:
its first event flush takes the claim with the same writes, when the job is as no run left it
(``workers/jobs/events.py``, ``JobRunner._run_once``); any other job is claimed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from workers.connections.pipescript import queue_script
from workers.contract import CompletionJob, CompletionResult, JobKeys
from workers.jobs.events import Write
from workers.jobs.history import HistoryWriter
from workers.jobs.webhooks import WebhookQueue

__all__ = ["Claim", "ClaimOutcome", "JobStore"]

# KEYS: claim, result, meta, events, cancel. ARGV: lease_ms, token (a claim already holding the same
# token is ours: a run that lost Redis for a moment claims again with its token).
# Returns {-2} (done), {-1} (busy) or {run, last seq, cancelled, attempts json}: one round trip
# gives the worker everything it needs to start.
_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {-2} end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] then return {-1} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
local run = redis.call('HINCRBY', KEYS[3], 'runs', 1)
redis.call('HSET', KEYS[3], 'state', 'running')
local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
local seq = -1
if #last > 0 then seq = tonumber(string.match(last[1][1], '^(%d+)')) end
local attempts = redis.call('HGET', KEYS[3], 'attempts') or ''
return {run, seq, redis.call('EXISTS', KEYS[5]), attempts}
"""

# KEYS: claim. ARGV: token. Deletes the claim only if we still hold it.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: claim. ARGV: token, lease_ms. Renews the lease only if we still hold it (1), else 0.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class ClaimOutcome:
    DONE = -2
    BUSY = -1


@dataclass(frozen=True, slots=True)
class Claim:
    run: int
    last_seq: int = -1
    cancelled: bool = False
    attempts_json: bytes = b""


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        result_ttl_s: int,
        claim_lease_s: int,
        history: HistoryWriter | None = None,
        webhooks: WebhookQueue | None = None,
    ) -> None:
        self._client = client
        #: Indexes every ended job for ``LLMQ_HISTORY_DAYS`` (None: no history).
        self.history = history
        #: Queues the webhook delivery of a job that has one (None: webhooks are not delivered).
        self.webhooks = webhooks
        self.result_ttl_s = result_ttl_s
        self.claim_lease_ms = claim_lease_s * 1000
        self._claim = client.register_script(_CLAIM_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._renew = client.register_script(_RENEW_LUA)

    def claim(self, keys: JobKeys, token: str) -> Claim:
        """``Claim.run`` >= 1 if we may run the job now, else ``ClaimOutcome.DONE``/``BUSY``."""
        reply = self._claim(
            keys=[keys.claim, keys.result, keys.meta, keys.events, keys.cancel], args=[self.claim_lease_ms, token]
        )
        return _claim_of(reply)

    def claim_with(
        self, keys: JobKeys, token: str, script: Any, script_keys: list[str], script_args: list[Any]
    ) -> tuple[Claim, Any]:
        """:meth:`claim`, and another script (keys of any slot) in the same round trip: its reply.

        Both EVALSHAs go out in one write on one pooled connection and are read back in order, as
        the shared flush does (``workers/jobs/flushbatch.py``): redis-py's pipeline object cost as
        much CPU as a round trip of its own here (~50 us a job). A script Redis no longer has
        (restarted, flushed) is loaded and that command alone sent again: the claim runs once."""
        claim_keys = [keys.claim, keys.result, keys.meta, keys.events, keys.cancel]
        commands = [
            (self._claim, ("EVALSHA", self._claim.sha, len(claim_keys), *claim_keys, self.claim_lease_ms, token)),
            (script, ("EVALSHA", script.sha, len(script_keys), *script_keys, *script_args)),
        ]
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            replies = conn.retry.call_with_retry(lambda: _exchange(conn, commands), lambda _error: conn.disconnect())
        except BaseException:
            conn.disconnect()  # replies may be left unread on it
            raise
        finally:
            pool.release(conn)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return _claim_of(replies[0]), replies[1]

    def claim_many(self, claims: list[tuple[JobKeys, str]]) -> list[Claim]:
        """:meth:`claim` of many jobs in one round trip (the batcher ending a provider batch's lines)."""
        pipe = self._client.pipeline(transaction=False)
        for keys, token in claims:
            script_keys = [keys.claim, keys.result, keys.meta, keys.events, keys.cancel]
            queue_script(pipe, self._claim, script_keys, [self.claim_lease_ms, token])
        return [_claim_of(reply) for reply in pipe.execute()]

    def release_many(self, claims: list[tuple[JobKeys, str]]) -> None:
        """:meth:`release` of many claims in one round trip."""
        if not claims:
            return
        pipe = self._client.pipeline(transaction=False)
        for keys, token in claims:
            queue_script(pipe, self._release, [keys.claim], [token])
        pipe.execute()

    def release(self, keys: JobKeys, token: str, pipe: redis.client.Pipeline | None = None) -> None:
        self._release(keys=[keys.claim], args=[token], client=pipe)

    def holds(self, keys: JobKeys, token: str) -> bool:
        """True while the claim still holds ``token`` (this run may write into the job)."""
        held = self._client.get(keys.claim)
        return held is not None and (held.decode() if isinstance(held, bytes) else held) == token

    def renew_many(self, claims: list[tuple[JobKeys, str]]) -> list[bool]:
        """Renew each (job, token) claim we still hold, in one round trip; False where it was lost."""
        if not claims:
            return []
        pipe = self._client.pipeline(transaction=False)
        for keys, token in claims:
            self._renew(keys=[keys.claim], args=[token, self.claim_lease_ms], client=pipe)
        return [bool(r) for r in pipe.execute()]

    def is_cancelled(self, keys: JobKeys) -> bool:
        return bool(self._client.exists(keys.cancel))

    def load_result(self, keys: JobKeys) -> CompletionResult | None:
        raw = self._client.get(keys.result)
        return CompletionResult.model_validate_json(raw) if raw else None

    def result_writes(
        self, keys: JobKeys, result: CompletionResult, job: CompletionJob, *, run: int = 1, raw: str | None = None
    ) -> list[Write]:
        """The writes that store a final result, push it to the producer's reply list (see
        ``CompletionJob.reply_to``), index the job in the history and queue its webhook, run
        inside the terminal event's flush, before its events: a job whose ending was written is
        always indexed, and its webhook always queued.

        The event stream's TTL is set by that flush's script, after its last XADD. ``raw``: the
        result's JSON when the caller has it already.
        """
        raw = raw or result.model_dump_json()
        ttl = self.result_ttl_s
        writes: list[Write] = [
            ("SET", keys.result, raw, "EX", ttl),
            ("HSET", keys.meta, "state", result.status, "tenant", result.tenant),
            ("EXPIRE", keys.meta, ttl),
        ]
        if job.reply_to:
            writes += [("RPUSH", job.reply_to, raw), ("EXPIRE", job.reply_to, ttl)]
        if self.history is not None:
            writes += self.history.writes(job, result, run=run)
        if self.webhooks is not None:
            writes += self.webhooks.writes(keys, job, result.status, raw)
        return writes


def _exchange(conn: Any, commands: list[tuple[Any, tuple[Any, ...]]]) -> list[Any]:
    """Send ``(script, EVALSHA command)`` pairs in one write and read their replies in order (an
    error reply as its exception); those that met NOSCRIPT are sent again once, after loading
    their script on this connection. A connection error raises (the caller's retry reconnects)."""
    replies: list[Any] = [None] * len(commands)
    pending = list(range(len(commands)))
    for attempt in range(2):
        conn.send_packed_command(conn.pack_commands([commands[i][1] for i in pending]))
        missing: list[int] = []
        for i in pending:
            try:
                replies[i] = conn.read_response()
            except redis.exceptions.NoScriptError as exc:
                replies[i] = exc
                missing.append(i)
            except redis.exceptions.ResponseError as exc:
                replies[i] = exc
        if not missing or attempt:
            break
        for i in missing:  # a restarted or new master: load them, once
            conn.send_command("SCRIPT", "LOAD", commands[i][0].script)
            sha = conn.read_response()
            commands[i][0].sha = sha.decode() if isinstance(sha, bytes) else sha
            commands[i] = (commands[i][0], ("EVALSHA", commands[i][0].sha, *commands[i][1][2:]))
        pending = missing
    return replies


def _claim_of(reply: Any) -> Claim:
    if len(reply) == 1:
        return Claim(int(reply[0]))
    run, seq, cancelled, attempts = reply
    return Claim(int(run), int(seq), bool(cancelled), attempts or b"")
