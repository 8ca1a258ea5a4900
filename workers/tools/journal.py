"""The tool loop's journal: each model answer and each tool call's result, durable in Redis.

One hash per job (``JobKeys.tools``), written as the loop goes:

* ``a:<turn>``       the model's answer of that turn (message, usage, cost, attempts), written as
                     soon as the answer is complete, before any of its calls runs;
* ``s:<turn>:<i>``   call ``i`` of that turn is about to run (written before its handler starts);
* ``r:<turn>:<i>``   call ``i``'s result (written when it ends).

A redelivered or re-queued job loads the hash and resumes after the last journaled step: no
model call and no tool run is repeated. A call with a start mark but no result was running when
its worker died; only an ``idempotent`` tool is run again. Every write is fenced: one Lua script
checks that this run still holds the job's claim (token) before writing, and refreshes the claim's
lease in the same round trip, so a run that lost the job can no longer journal anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from pydantic import Field

from workers.contract import Attempt, JobKeys, Message, Usage
from workers.contract.base import WireModel
from workers.llm.errors import RunFencedError

__all__ = ["CallRecord", "JournalState", "ToolJournal", "TurnRecord"]

# KEYS: claim, journal. ARGV: token, ttl_s, lease_ms, then field/value pairs.
# Returns 0 when the claim is not ours (fenced), else 1.
_WRITE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if #ARGV > 3 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 4))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


class TurnRecord(WireModel):
    """One model turn's answer."""

    turn: int
    message: Message
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    model_used: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)


class CallRecord(WireModel):
    """The outcome of one tool call, as fed back to the model."""

    turn: int
    index: int
    call_id: str
    name: str
    ok: bool
    #: The text of the ``tool`` message.
    content: str
    error: str | None = None
    #: The arguments failed validation (counts towards the tool's ``max_invalid``).
    invalid: bool = False
    duration_s: float = 0.0


@dataclass
class JournalState:
    answers: dict[int, TurnRecord] = field(default_factory=dict)
    started: set[tuple[int, int]] = field(default_factory=set)
    results: dict[tuple[int, int], CallRecord] = field(default_factory=dict)


class ToolJournal:
    def __init__(self, client: redis.Redis, keys: JobKeys, token: str, *, ttl_s: int, lease_ms: int) -> None:
        self._client = client
        self._keys = keys
        self._token = token
        self._ttl_s = ttl_s
        self._lease_ms = lease_ms
        self._write = client.register_script(_WRITE_LUA)

    def load(self) -> JournalState:
        state = JournalState()
        for raw_key, raw in self._client.hgetall(self._keys.tools).items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            kind, _, rest = key.partition(":")
            if kind == "a":
                record = TurnRecord.model_validate_json(raw)
                state.answers[record.turn] = record
            elif kind == "s":
                turn, _, index = rest.partition(":")
                state.started.add((int(turn), int(index)))
            elif kind == "r":
                result = CallRecord.model_validate_json(raw)
                state.results[(result.turn, result.index)] = result
        return state

    def _send(self, fields: list[str]) -> None:
        ok = self._write(
            keys=[self._keys.claim, self._keys.tools], args=[self._token, self._ttl_s, self._lease_ms, *fields]
        )
        if not ok:
            raise RunFencedError(
                "this run lost its claim on the job (another run owns it now): it stopped without journaling"
            )

    def answer(self, record: TurnRecord) -> None:
        self._send([f"a:{record.turn}", record.model_dump_json()])

    def started(self, turn: int, indexes: list[int]) -> None:
        fields: list[str] = []
        for index in indexes:
            fields += [f"s:{turn}:{index}", "1"]
        self._send(fields)

    def result(self, record: CallRecord) -> None:
        self._send([f"r:{record.turn}:{record.index}", record.model_dump_json()])

    def heartbeat(self) -> None:
        """Keep the claim alive while tools run (no events flush then); fenced like a write."""
        self._send([])
