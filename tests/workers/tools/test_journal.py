"""The journal in Redis: what a run writes, what the next run reads, and fencing by claim."""

from __future__ import annotations

import pytest
import redis

from workers.contract import FunctionCall, JobKeys, Message, ToolCall, Usage
from workers.llm.errors import RunFencedError
from workers.tools.journal import CallRecord, ToolJournal, TurnRecord


def _journal(client: redis.Redis, keys: JobKeys, token: str) -> ToolJournal:
    return ToolJournal(client, keys, token, ttl_s=60, lease_ms=5000)


def test_a_run_reads_what_the_previous_run_journaled(redis_client: redis.Redis) -> None:
    keys = JobKeys("journal-1")
    redis_client.set(keys.claim, "run-1")
    first = _journal(redis_client, keys, "run-1")
    call = ToolCall(id="call_1", function=FunctionCall(name="get_capital", arguments='{"country":"UK"}'))
    first.answer(
        TurnRecord(
            turn=1, message=Message(role="assistant", tool_calls=[call]), usage=Usage(prompt_tokens=9), cost_usd=0.5
        )
    )
    first.started(1, [0, 1])
    first.result(CallRecord(turn=1, index=0, call_id="call_1", name="get_capital", ok=True, content="London"))

    redis_client.set(keys.claim, "run-2")  # the first run died; the redelivered job claimed it
    state = _journal(redis_client, keys, "run-2").load()
    assert list(state.answers) == [1] and state.answers[1].message.tool_calls == [call]
    assert state.started == {(1, 0), (1, 1)}
    assert state.results[(1, 0)].content == "London" and (1, 1) not in state.results
    assert 0 < redis_client.ttl(keys.tools) <= 60


def test_a_run_that_lost_its_claim_cannot_journal(redis_client: redis.Redis) -> None:
    keys = JobKeys("journal-2")
    redis_client.set(keys.claim, "run-2")
    stale = _journal(redis_client, keys, "run-1")
    with pytest.raises(RunFencedError):
        stale.started(1, [0])
    with pytest.raises(RunFencedError):
        stale.heartbeat()
    assert not redis_client.exists(keys.tools)


def test_heartbeat_keeps_the_claim_alive(redis_client: redis.Redis) -> None:
    keys = JobKeys("journal-3")
    redis_client.set(keys.claim, "run-1", px=100)
    _journal(redis_client, keys, "run-1").heartbeat()
    assert redis_client.pttl(keys.claim) > 1000
