"""Publishing one job's events: numbered, coalesced, live (pub/sub) and replayable (Stream).

Every flush is one Lua script call (one Redis round trip, or a share of one: below): ``XADD`` to
the job's capped Stream with the entry id ``<seq>-1`` (so replay from seq N is ``XRANGE N-0 +``),
``PUBLISH`` of the same payloads to the job's channel, ``EXISTS`` of the cancel key and a refresh
of the worker's claim lease. Deltas are coalesced: the first delta after a quiet period goes out
at once (time to first token is not delayed); deltas arriving within ``coalesce_s`` of the last
flush are buffered until the window has passed or ``coalesce_chars`` are pending. Publishing per
delta was ~70 % of a raw client's per-job CPU in the notes' measurements; this is the lever.

With a :class:`~workers.jobs.flushbatch.FlushBatcher` (the worker's default, ``LLMQ_BATCH_FLUSHES``),
the script calls of all the process's running jobs share round trips: each flush still waits for
its own reply (fencing, cancel, its own errors). Every flush goes through it, the start, tool and
terminal events too (the same script, the same per-caller outcome and retry policy, so equally
safe); without one, each flush is a direct call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis
from redis.typing import EncodableT

from workers.connections.oom import refused_for_memory
from workers.connections.pipescript import queue_script
from workers.contract import JobKeys, StreamEvent
from workers.jobs.flushbatch import FlushBatcher
from workers.llm.errors import RunFencedError

__all__ = [
    "ClaimMissedError",
    "EventPublisher",
    "PipelinedFlushes",
    "ScriptCalls",
    "Write",
    "delta_json",
    "flush_batcher",
    "last_seq",
]

#: A Redis command the flush script runs before publishing its events: ``("SET", key, value, ...)``.
Write = tuple[EncodableT, ...]

# One round trip per flush, whatever the number of events: check that this run still holds the
# job's claim (fencing: a run that lost it writes nothing), run the flush's writes (the terminal
# flush stores the result and notifies the producer this way, before its events go out), append
# each event to the replay Stream (entry id <seq>-1), publish it live, keep the Stream's TTL and
# the claim's lease (or release the claim: the run's last write), and report whether the job was
# cancelled (-1: fenced).
# A run's first flush may take the claim instead of checking it (mode 2 or 3: a first delivery,
# ``EventPublisher(claim_first=True)``): only if the job is as no run left it (no result, claim,
# cancel, run count, attempts or event: what a claim would then have answered, run 1 from seq -1,
# is what the run numbered its events with), with the claim's own writes (``JobStore.claim``);
# else it writes nothing and returns -2 (the run claims the ordinary way).
# KEYS: events, channel, cancel, claim (and result, meta when taking the claim). ARGV: maxlen, ttl
# (0 = keep), lease_ms (0 = none), n, token ('' = unfenced), mode ('0' renew the claim, '1' release
# it instead: the run's last write, '2' take it then renew, '3' take it then release), w (number of
# writes), then n pairs of (entry id, payload), then w writes, each as (argc, command, args...).
_PUBLISH_LUA = """
local mode = tonumber(ARGV[6])
if mode >= 2 then
  if redis.call('EXISTS', KEYS[4], KEYS[5], KEYS[3]) > 0 or redis.call('XLEN', KEYS[1]) > 0
      or redis.call('HEXISTS', KEYS[6], 'runs') == 1 or redis.call('HEXISTS', KEYS[6], 'attempts') == 1 then
    return -2
  end
  redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[3])
  redis.call('HINCRBY', KEYS[6], 'runs', 1)
  redis.call('HSET', KEYS[6], 'state', 'running')
elseif ARGV[5] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[5] then
  return -1
end
local n = tonumber(ARGV[4])
local at = 8 + 2 * n
for _ = 1, tonumber(ARGV[7]) do
  local argc = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + argc))
  at = at + argc + 1
end
for i = 0, n - 1 do
  local payload = ARGV[9 + 2 * i]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[8 + 2 * i], 'e', payload)
  redis.call('PUBLISH', KEYS[2], payload)
end
if ARGV[2] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if ARGV[5] ~= '' then
  if mode % 2 == 1 then redis.call('DEL', KEYS[4])
  elseif mode == 0 and ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[4], ARGV[3]) end
end
return redis.call('EXISTS', KEYS[3])
"""


class ClaimMissedError(Exception):
    """A run's first flush was to take the job's claim, and the job was not as no run left it (run
    before, claimed, cancelled or ended): nothing was written. The run claims it the ordinary way
    (``JobStore.claim``) and starts again."""


class ScriptCalls(Protocol):
    """Runs a publisher's flush script for it (:class:`FlushBatcher`, :class:`PipelinedFlushes`)."""

    def call(self, keys: Sequence[Any], args: Sequence[EncodableT]) -> Any: ...


class PipelinedFlushes:
    """Flushes of many jobs queued on one pipeline and sent by :meth:`execute` in one round trip
    (the batcher ending a provider batch's lines). A queued flush's reply is not known when it is
    queued: :meth:`call` returns 0 (not fenced, not cancelled); :meth:`execute` returns the replies
    (-1: that job's claim was lost, its flush wrote nothing)."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_PUBLISH_LUA)
        self._pipe = client.pipeline(transaction=False)
        self._queued = 0

    def call(self, keys: Sequence[Any], args: Sequence[EncodableT]) -> Any:
        queue_script(self._pipe, self._script, keys, args)
        self._queued += 1
        return 0

    def execute(self) -> list[Any]:
        if not self._queued:
            return []
        self._queued = 0
        return list(self._pipe.execute())


def flush_batcher(client: redis.Redis, *, max_batch: int = 128, drain_s: float = 5.0) -> FlushBatcher:
    """The process's batcher of publish-script calls (one per process, shared by its publishers)."""
    return FlushBatcher(client, _PUBLISH_LUA, max_batch=max_batch, drain_s=drain_s)


def last_seq(client: redis.Redis, keys: JobKeys) -> int:
    """The seq of the newest event already in the job's stream, or -1."""
    entries = client.xrevrange(keys.events, count=1)
    if not entries:
        return -1
    raw_id = entries[0][0]
    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    return int(entry_id.split("-", 1)[0])


#: JSON of a string as ``json.dumps(..., ensure_ascii=False)`` writes it (the C encoder).
_json_string: Callable[[str], str] = (
    getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring
)


def delta_json(job_id: str, seq: int, run: int, ts: float, text: str) -> str:
    """A delta event's JSON, as ``json.dumps`` of its fields with ``ensure_ascii=False`` and compact
    separators writes it, without building a dict and an encoder per delta (~10 a job)."""
    return (
        f'{{"type":"delta","job_id":{_json_string(job_id)},"seq":{seq:d},"run":{run:d},'
        f'"ts":{float.__repr__(ts)},"text":{_json_string(text)}}}'
    )


class EventPublisher:
    def __init__(
        self,
        client: redis.Redis,
        keys: JobKeys,
        *,
        run: int,
        start_seq: int,
        coalesce_s: float = 0.05,
        coalesce_chars: int = 512,
        maxlen: int = 10_000,
        ttl_s: int = 86_400,
        claim_lease_ms: int | None = None,
        token: str = "",
        publish_deltas: bool = True,
        clock: Callable[[], float] = time.monotonic,
        flusher: ScriptCalls | None = None,
        claim_first: bool = False,
        on_claimed: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._run = run
        self._seq = start_seq
        self._coalesce_s = coalesce_s
        self._coalesce_chars = coalesce_chars
        self._maxlen = maxlen
        self._ttl_s = ttl_s
        self._lease_ms = claim_lease_ms
        #: The run's claim token: every write checks that the claim still holds it ("" = no check).
        self._token = token
        self._publish_deltas = publish_deltas
        self._clock = clock
        #: Shares the flushes' round trips with the process's other jobs (None: a direct call each).
        self._flusher: ScriptCalls | None = flusher
        self._publish_script: Any = None
        self._pending: list[str] = []
        #: Events of flushes Redis refused at ``maxmemory``: sent first by the next flush, in order.
        self._unsent: list[tuple[int, str]] = []
        #: Called when Redis refuses a flush that writes the job's ending: True to try it again
        #: (Redis takes writes again), False to give up (the refusal is raised). None: raised at once.
        self.on_full: Callable[[], bool] | None = None
        self._pending_chars = 0
        self._last_flush = -1e9
        self._pending_flushed_delta = False
        self._ttl_set = False
        #: The first flush takes the job's claim for ``token`` (a first delivery, numbered as run 1
        #: from seq -1: the script checks the job is as no run left it, else :class:`ClaimMissedError`).
        self.claim_pending = claim_first
        #: Called once that flush took the claim.
        self.on_claimed = on_claimed
        #: Set when a flush saw the job's cancel key.
        self.cancelled = False
        #: Number of deltas published so far (0 means retry/fallback is still allowed).
        self.published_deltas = 0

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def run(self) -> int:
        """Which execution of the job this publisher numbers events for."""
        return self._run

    # --- deltas ---------------------------------------------------------------------------------

    def delta(self, text: str) -> None:
        """Buffer a text delta; flush when the coalescing window or size says so."""
        if not self._publish_deltas or not text:
            return
        self._pending.append(text)
        self._pending_chars += len(text)
        if self._pending_chars >= self._coalesce_chars or self._clock() - self._last_flush >= self._coalesce_s:
            self.flush()

    def _take_pending(self) -> tuple[int, str] | None:
        if not self._pending:
            return None
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        self._pending_flushed_delta = True
        self._seq += 1
        self.published_deltas += 1
        return self._seq, delta_json(self._keys.job_id, self._seq, self._run, time.time(), text)

    # --- other events -----------------------------------------------------------------------------

    def emit(self, event: StreamEvent, *, writes: Sequence[Write] = (), release_claim: bool = False) -> None:
        """Flush pending deltas, then publish ``event`` with the next seq (set here).

        ``writes`` run in the same round trip, after the fencing check and before the event is
        published: the terminal event stores the result this way, so a consumer that sees ``done``
        can always read the result. ``release_claim`` ends the run's claim in that round trip too.
        """
        self.emit_many([event], writes=writes, release_claim=release_claim)

    def emit_many(
        self, events: list[StreamEvent], *, writes: Sequence[Write] = (), release_claim: bool = False
    ) -> None:
        """Like :meth:`emit` for several events, still one round trip."""
        payloads = []
        pending = self._take_pending()
        if pending is not None:
            payloads.append(pending)
        for event in events:
            self._seq += 1
            event.seq = self._seq
            event.run = self._run
            payloads.append((self._seq, event.model_dump_json()))
        self._send(payloads, writes, release_claim)

    def flush(self) -> None:
        pending = self._take_pending()
        if pending is not None:
            self._send([pending])

    def _send(self, payloads: list[tuple[int, str]], writes: Sequence[Write] = (), release: bool = False) -> None:
        """One script call: fencing check, ``writes``, the events, TTL and lease (or release).

        A flush Redis refuses at ``maxmemory`` (the script's first write is refused, so none of it
        is applied) is not lost: a flush of events only keeps them for the next flush (the numbering
        stays; the terminal flush sends them all); a flush with writes (the ending) is tried again
        for as long as :attr:`on_full` says so."""
        if self._unsent:
            payloads = [*self._unsent, *payloads]
            self._unsent = []
        while True:
            try:
                self._send_once(payloads, writes, release)
                return
            except redis.ResponseError as exc:
                if not refused_for_memory(exc):
                    raise
                if self.claim_pending:  # the claim was refused with it: the run has not started (run() waits)
                    raise
                if not writes and not release:
                    self._unsent = payloads
                    return
                if self.on_full is None or not self.on_full():
                    self._unsent = payloads
                    raise

    def _send_once(self, payloads: list[tuple[int, str]], writes: Sequence[Write], release: bool) -> None:
        keys = self._keys
        claiming = self.claim_pending
        argv: list[EncodableT] = [
            self._maxlen,
            0 if self._ttl_set else self._ttl_s,
            self._lease_ms or 0,
            len(payloads),
            self._token,
            ("3" if release else "2") if claiming else ("1" if release else "0"),
            len(writes),
        ]
        for seq, raw in payloads:
            argv.append(f"{seq}-1")
            argv.append(raw)
        for write in writes:
            argv.append(len(write))
            argv.extend(write)
        script_keys = [keys.events, keys.channel, keys.cancel, keys.claim]
        if claiming:
            script_keys += [keys.result, keys.meta]
        if self._flusher is not None:
            cancelled = self._flusher.call(script_keys, argv)
        else:
            if self._publish_script is None:  # only without a batcher: a direct call
                self._publish_script = self._client.register_script(_PUBLISH_LUA)
            cancelled = self._publish_script(keys=script_keys, args=argv)
        if cancelled == -2:
            raise ClaimMissedError(f"job {keys.job_id} is not a first run's: its claim is taken the ordinary way")
        self._ttl_set = True
        if claiming:
            self.claim_pending = False
            if self.on_claimed is not None:
                self.on_claimed()
        if cancelled == -1:
            raise RunFencedError(f"run {self._run} of job {keys.job_id} lost its claim; it writes nothing more")
        if cancelled:
            self.cancelled = True
        if self._pending_flushed_delta:
            # only delta flushes open a coalescing window: the first delta after the start
            # event (or after a quiet period) always goes out at once
            self._last_flush = self._clock()
            self._pending_flushed_delta = False

    def refresh_ttl(self) -> None:
        """Make the replay stream live as long as the result (called with the terminal event)."""
        self._ttl_set = False
