"""Extended thinking in a worker tool loop on Anthropic, end to end (real Redis, an in-process
Celery worker, the simulator). The simulator, like the real API, refuses a turn of tool results
whose preceding assistant turn lacks its signed thinking block, so a loop that dropped the block
would fail on its second turn."""

from __future__ import annotations

import pytest

from producers import Client
from simulator.app import SimulatorThread
from simulator.protocols.anthropic import signature
from simulator.structured import THINKING
from tests.support import tools as T
from tests.support.tools import tools_worker_settings
from workers.contract import ReasoningBlock
from workers.settings import Settings

pytestmark = pytest.mark.usefixtures("fresh_tools")


@pytest.fixture
def worker_settings(redis_url: str) -> Settings:
    return tools_worker_settings(redis_url, concurrency=2)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "body"])
def test_a_tool_loop_with_thinking_sends_the_signed_blocks_back(
    worker: object, client: Client, simulator: SimulatorThread, stream: bool
) -> None:
    handle = client.submit(
        {
            "model": "anthropic:claude-sonnet-4-5~tools",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "tools": ["get_capital"],
            "max_tokens": 2048,
            "reasoning": {"budget_tokens": 1024},
            "stream": stream,
        }
    )
    result = handle.result(timeout=60)
    assert result.status == "succeeded", result.error
    assert result.turns == 2
    assert T.CALLS["get_capital"] == 1
    assert "[1] Paris" in result.content  # the second turn was answered, quoting the tool result
    records = simulator.simulator.stats.records(result.id)
    assert [r["outcome"] for r in records] == ["ok", "ok"]
    assert [m.role for m in result.messages] == ["assistant", "tool", "assistant"]
    block = ReasoningBlock(type="thinking", thinking=THINKING, signature=signature(THINKING))
    assert result.messages[0].reasoning_blocks == [block]  # journaled with the turn, sent back on turn 2
    assert result.messages[2].reasoning_blocks == [block]  # the final answer thought too
    assert result.reasoning_blocks == [block]
    # thinking is billed as output: counted into reasoning_tokens, within completion_tokens, both turns
    usage = result.usage
    assert usage.reasoning_tokens > 0
    assert usage.completion_tokens > usage.reasoning_tokens
    assert result.cost_usd is not None and result.cost_usd > 0
