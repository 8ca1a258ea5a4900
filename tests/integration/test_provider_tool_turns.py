"""A tool loop over providers that send no tool-call ids, handed to Anthropic by a fallback.

Gemini and Ollama send tool calls without ids: ours are synthesized. Two turns of calls, then the
provider fails and the chain falls back to Anthropic, which refuses a conversation that repeats a
``tool_use`` id (the simulator checks it as the real API does). Every call runs once and the
answer comes from Anthropic with both turns' calls and results in its request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_config, provider_env
from tests.conftest import Broker
from tests.support import tools as T
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

pytestmark = pytest.mark.usefixtures("fresh_tools")

#: Two turns of one tool call each, then an outage: the third turn falls back.
PLAN = "~tools,tools,503*"
FALLBACK = "anthropic:claude-sonnet-4-5"


@pytest.fixture
def config_path(tmp_path: Path, simulator: SimulatorThread) -> Path:
    path = tmp_path / "llmq.toml"
    models = "".join(
        f'[models."{m}{PLAN}"]\nmax_retries = 0\n\n'
        for m in ("gemini:gemini-2.5-flash", "ollama:llama3.1", "bedrock:us.amazon.nova-micro-v1:0")
    )
    path.write_text(provider_config(simulator.url) + "\n" + models)
    return path


@pytest.fixture
def tool_worker(redis_url: str, broker: Broker, config_path: Path, simulator: SimulatorThread) -> Iterator[object]:
    settings = Settings(
        redis_url=redis_url,
        broker_url=broker.url,
        queue=broker.queue,
        pool="threads",
        concurrency=2,
        coalesce_ms=20.0,
        claim_lease_s=10,
        config=str(config_path),
        tools="tests.support.tools",
    )
    app = create_app(settings, provider_env=provider_env(simulator.url))
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=10) as w:
        yield w
    close_runner(app)


@pytest.mark.parametrize("model", ["gemini:gemini-2.5-flash", "ollama:llama3.1", "bedrock:us.amazon.nova-micro-v1:0"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_two_turns_of_calls_then_a_fallback_to_anthropic_keep_every_call_id_unique(
    tool_worker: object, client: Client, model: str, stream: bool
) -> None:
    job = {
        "model": model + PLAN,
        "fallbacks": [FALLBACK],
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "tools": ["get_capital"],
        "stream": stream,
        "max_tokens": 200,
    }
    result = client.submit(job).result(timeout=60)
    assert result.status == "succeeded", result.error
    assert result.model_used == FALLBACK and result.turns == 3
    assert T.CALLS["get_capital"] == 2
    calls = [c for m in result.messages if m.role == "assistant" for c in m.tool_calls or []]
    answered = [m.tool_call_id for m in result.messages if m.role == "tool"]
    assert len(calls) == 2 and len({c.id for c in calls}) == 2
    assert answered == [c.id for c in calls]
    # the third turn: the provider's outage, then Anthropic's answer
    assert [(a.model, a.status, a.turn) for a in result.attempts[-2:]] == [
        (model + PLAN, "failed", 3),
        (FALLBACK, "succeeded", 3),
    ]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_bedrock_answers_a_conversation_with_tool_history_and_no_tools(
    tool_worker: object, client: Client, stream: bool
) -> None:
    """Converse refuses toolUse/toolResult blocks without a toolConfig (the simulator too, in its
    words): earlier tool turns go as text when the job offers no tools."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_capital", "arguments": '{"country": "France"}'},
    }
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Paris"},
        {"role": "user", "content": "Say it in one sentence."},
    ]
    job = {"model": "bedrock:us.amazon.nova-micro-v1:0", "messages": messages, "stream": stream, "max_tokens": 50}
    result = client.submit(job).result(timeout=60)
    assert result.status == "succeeded", result.error
    assert [a.status for a in result.attempts] == ["succeeded"]
