"""Provider prompt caching through the real queue, against the simulator applying each provider's rules.

The simulator's Anthropic side keeps what ``cache_control`` breakpoints wrote (5 minutes or 1 hour)
and reports reads and writes as the API does (``simulator/promptcache.py``); the worker marks the
stable prefix itself with ``prompt_cache: "auto"``, on every turn of its tool loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_config, provider_env
from tests.support.spend import global_spent_usd
from tests.support.tools import tools_worker_settings
from workers.contract import CompletionResult
from workers.runtime.app import close_runner, create_app, runner_for

pytestmark = pytest.mark.usefixtures("fresh_tools")

#: ~20,000 tokens as the simulator counts them (4 characters a token).
SYSTEM = "You answer questions about capitals. " + "Background: " + "capital city facts " * 4200
MODEL = "anthropic:claude-sonnet-4-5"
#: Nine turns that call the tool, then the answer: a 10-turn tool loop.
TEN_TURNS = "~" + ",".join(["tools"] * 9 + ["ok"])


@pytest.fixture
def app(redis_url: str, simulator: SimulatorThread) -> Iterator[Any]:
    app = create_app(tools_worker_settings(redis_url, concurrency=4), provider_env=provider_env(simulator.url))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10):
        yield app
    close_runner(app)


def _loop(client: Client, redis_url: str, model: str = MODEL, **extra: object) -> tuple[CompletionResult, float]:
    before = global_spent_usd(redis_url)
    job = {
        "model": model + TEN_TURNS,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "The capital of France?"}],
        "tools": ["get_capital"],
        "max_turns": 10,
        "max_tokens": 200,
        **extra,
    }
    result = client.submit(job).result(timeout=120)
    assert result.status == "succeeded" and result.turns == 10, result.error
    return result, global_spent_usd(redis_url) - before


def _tokens(app: Any, kind: str) -> float:
    registry = runner_for(app).res.metrics.registry
    return float(registry.get_sample_value("llm_tokens_total", {"model": MODEL + TEN_TURNS, "type": kind}) or 0)


def test_a_ten_turn_tool_loop_with_prompt_cache_auto_costs_under_a_third(
    app: Any, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    plain, plain_usd = _loop(client, redis_url)
    assert plain.usage.cached_tokens == 0 and plain.usage.cache_write_tokens == 0  # no breakpoint, no cache
    assert plain.usage.prompt_tokens > 10 * 19_000
    cached, cached_usd = _loop(client, redis_url, prompt_cache="auto")
    assert cached_usd <= 0.3 * plain_usd, (cached_usd, plain_usd)
    print(f"RATIO {cached_usd / plain_usd:.3f} cached ${cached_usd:.4f} plain ${plain_usd:.4f}")
    assert cached.cost_usd == pytest.approx(cached_usd, abs=1e-5) and plain.cost_usd == pytest.approx(
        plain_usd, abs=1e-5
    )
    # turn 1 wrote the system prompt (and the question), the nine after it read it back
    usage = cached.usage
    assert usage.cache_write_tokens >= 19_000 and usage.cached_tokens >= 9 * 19_000
    assert usage.prompt_tokens == plain.usage.prompt_tokens  # the same prompt, only billed differently
    assert _tokens(app, "cached") == usage.cached_tokens and _tokens(app, "cache_write") == usage.cache_write_tokens
    # a later job with the same system prompt reads it too, without writing it again
    again, _ = _loop(client, redis_url, prompt_cache="auto")
    assert again.usage.cached_tokens > usage.cached_tokens


def test_caller_breakpoints_pass_through_with_their_ttl(
    app: Any, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    job = {"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]}
    first = client.submit(job).result(timeout=60)
    assert (
        first.usage.cache_write_tokens >= 19_000 and first.usage.cache_write_1h_tokens == first.usage.cache_write_tokens
    )
    second = client.submit({**job, "stream": False}).result(timeout=60)  # whole-body usage too
    assert second.usage.cached_tokens == first.usage.cache_write_tokens and second.usage.cache_write_tokens == 0
    assert second.cost_usd is not None and first.cost_usd is not None and second.cost_usd < first.cost_usd / 5
    assert _tokens_for(app, MODEL, "cache_write_1h") == first.usage.cache_write_1h_tokens
    # a prefix under Anthropic's minimum (1,024 tokens) is not cached
    short = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {}}]}],
    }
    assert client.submit(short).result(timeout=60).usage.cache_write_tokens == 0


def _tokens_for(app: Any, model: str, kind: str) -> float:
    registry = runner_for(app).res.metrics.registry
    return float(registry.get_sample_value("llm_tokens_total", {"model": model, "type": kind}) or 0)


#: Claude on Bedrock: ``cachePoint`` blocks in the Converse body, Anthropic's cache rules.
BEDROCK_CLAUDE = "bedrock:us.anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.fixture
def bedrock_app(redis_url: str, simulator: SimulatorThread, tmp_path: Path) -> Iterator[Any]:
    """A worker that also has the simulator's Bedrock (and Azure, Gemini) providers configured."""
    config = tmp_path / "llmq.toml"
    config.write_text(provider_config(simulator.url))
    settings = tools_worker_settings(redis_url, concurrency=4).model_copy(update={"config": str(config)})
    app = create_app(settings, provider_env=provider_env(simulator.url))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10):
        yield app
    close_runner(app)


def test_bedrock_claude_gets_cache_points_the_tool_loop_reads_them_and_1h_writes_are_split(
    bedrock_app: Any, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    app = bedrock_app
    plain, plain_usd = _loop(client, redis_url, model=BEDROCK_CLAUDE)
    assert plain.usage.cached_tokens == 0 and plain.usage.cache_write_tokens == 0
    cached, cached_usd = _loop(client, redis_url, model=BEDROCK_CLAUDE, prompt_cache="auto")
    assert cached_usd <= 0.3 * plain_usd, (cached_usd, plain_usd)
    assert cached.usage.cache_write_tokens >= 19_000 and cached.usage.cached_tokens >= 9 * 19_000
    assert cached.usage.prompt_tokens == plain.usage.prompt_tokens
    assert _tokens_for(app, BEDROCK_CLAUDE + TEN_TURNS, "cached") == cached.usage.cached_tokens
    # a caller's 1-hour breakpoint: written at the 1-hour rate (cacheDetails), read back by the next job
    system = [{"type": "text", "text": SYSTEM + " (1h)", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    job = {
        "model": BEDROCK_CLAUDE,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
    }
    first = client.submit(job).result(timeout=60)
    assert first.usage.cache_write_tokens >= 19_000
    assert first.usage.cache_write_1h_tokens == first.usage.cache_write_tokens
    second = client.submit({**job, "stream": False}).result(timeout=60)  # whole-body usage too
    assert second.usage.cached_tokens == first.usage.cache_write_tokens and second.usage.cache_write_tokens == 0
    assert second.cost_usd is not None and first.cost_usd is not None and second.cost_usd < first.cost_usd / 5


def test_auto_with_a_callers_1h_breakpoint_is_a_request_anthropic_takes(
    app: Any, client: Client, simulator: SimulatorThread
) -> None:
    """The simulator refuses a 1-hour breakpoint after a 5-minute one, as Anthropic does; ``auto``
    next to a caller's 1-hour breakpoint sends a valid request, which writes at the 1-hour rate."""
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [{"type": "text", "text": "Question one?", "cache_control": {"ttl": "1h"}}]},
        {"role": "assistant", "content": "Answer one."},
        {"role": "user", "content": "Question two?"},
    ]
    result = client.submit({"model": MODEL, "messages": messages, "prompt_cache": "auto"}).result(timeout=60)
    assert result.status == "succeeded", result.error
    assert result.usage.cache_write_1h_tokens >= 19_000  # the system prompt's hour, with the caller's
