"""Prompt-cache parameters on the wire: Anthropic breakpoints (caller's and ``prompt_cache: "auto"``),
OpenAI's ``prompt_cache_key``, the usage fields and their prices, the contract's limits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from workers.accounting.prices import PriceBook
from workers.contract import CompletionJob, Message, Tool, Usage
from workers.contract.params import RequestParams
from workers.llm.anthropic import _usage, build_body
from workers.llm.base import ChatRequest
from workers.llm.openai import OpenAIProvider

TOOL = Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})
MARKED_TOOL = Tool.model_validate({**TOOL.model_dump(), "cache_control": {"type": "ephemeral"}})


def _request(messages: list[dict[str, object]], tools: list[Tool] | None = None, **params: object) -> ChatRequest:
    return ChatRequest(
        messages=[Message.model_validate(m) for m in messages],
        params=RequestParams.model_validate({"max_tokens": 10, **params}),
        tools=tools or [],
    )


def test_anthropic_gets_the_callers_breakpoints_with_their_ttl() -> None:
    request = _request(
        [
            {"role": "system", "content": [{"type": "text", "text": "sys", "cache_control": {"ttl": "1h"}}]},
            {"role": "user", "content": "q", "cache_control": {}},
        ],
        tools=[MARKED_TOOL],
    )
    body = build_body("m", request, stream=False)
    assert body["system"] == [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": {"type": "ephemeral"}}]}
    ]
    assert body["tools"][0]["cache_control"] == {"type": "ephemeral"}  # type: ignore[index]
    plain = build_body(
        "m", _request([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]), stream=False
    )
    assert plain["system"] == "a" and "cache_control" not in str(plain)  # nothing asked, nothing sent


def test_prompt_cache_auto_marks_the_stable_prefix_and_the_conversation_so_far() -> None:
    turns = [
        {"role": "system", "content": "long system prompt"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "result"},
    ]
    body = build_body("m", _request(turns, tools=[TOOL], prompt_cache="auto"), stream=False)
    assert body["system"] == [{"type": "text", "text": "long system prompt", "cache_control": {"type": "ephemeral"}}]
    last = body["messages"][-1]["content"][-1]  # type: ignore[index]
    assert last["type"] == "tool_result" and last["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in body["tools"][0]  # type: ignore[index]  # the system breakpoint covers tools
    no_system = build_body("m", _request(turns[1:], tools=[TOOL], prompt_cache="auto"), stream=False)
    assert no_system["tools"][0]["cache_control"] == {"type": "ephemeral"}  # type: ignore[index]
    # never more than Anthropic's four: the caller's three plus one of auto's two
    marked = [{"role": "user", "content": [{"type": "text", "text": t, "cache_control": {}} for t in "abc"]}]
    crowded = build_body(
        "m", _request([{"role": "system", "content": "s"}, *marked], prompt_cache="auto"), stream=False
    )
    assert str(crowded).count("cache_control") == 4


def test_openai_takes_prompt_cache_key_and_never_sees_breakpoints() -> None:
    request = _request(
        [{"role": "user", "content": [{"type": "text", "text": "q", "cache_control": {}}], "cache_control": {}}],
        tools=[MARKED_TOOL],
        prompt_cache_key="tenant-a:faq",
        prompt_cache="auto",
    )
    provider = OpenAIProvider.__new__(OpenAIProvider)
    provider._max_tokens_field = "max_completion_tokens"  # type: ignore[attr-defined]
    body = provider.build_body("m", request, stream=False)
    assert body["prompt_cache_key"] == "tenant-a:faq" and "cache_control" not in str(body)


def test_anthropic_usage_splits_writes_by_ttl_and_prices_them() -> None:
    usage = _usage(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 3000,
            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
            "output_tokens": 5,
        }
    )
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (
        4010,
        1000,
        3000,
        2000,
    )
    price = PriceBook().lookup("anthropic:claude-sonnet-4-5")
    # $3 input, $0.30 read, $3.75 5-minute write, $6 (2x input) 1-hour write, $15 output per MTok
    want = (10 * 3 + 1000 * Decimal("0.3") + 1000 * Decimal("3.75") + 2000 * 6 + 5 * 15) / Decimal(1_000_000)
    assert price.cost(usage) == want
    assert price.worst_case_cost(1000, 10, cache_writes=True) == (1000 * 6 + 10 * 15) / Decimal(1_000_000)
    assert price.cost(Usage(prompt_tokens=100, cache_write_tokens=100, cache_write_1h_tokens=100)) == Decimal("0.0006")


def test_the_contract_refuses_more_than_four_breakpoints_and_1h_after_5m() -> None:
    def job(*marks: str) -> CompletionJob:
        parts = [{"type": "text", "text": str(i), "cache_control": {"ttl": t}} for i, t in enumerate(marks)]
        return CompletionJob.model_validate({"model": "anthropic:m", "messages": [{"role": "user", "content": parts}]})

    job("1h", "1h", "5m", "5m")
    with pytest.raises(ValidationError, match="at most 4"):
        job("5m", "5m", "5m", "5m", "5m")
    with pytest.raises(ValidationError, match="1h cache_control breakpoint must come before"):
        job("5m", "1h")


def test_bedrock_takes_cache_points_where_its_model_caches() -> None:
    """Claude on Bedrock: a ``cachePoint`` after each marked system block, part, message and tool
    (``ttl: "1h"`` passed on); Nova: no tool points, 5 minutes; other models and an unnamed
    inference profile: none (ignored, as the rule says)."""
    from workers.llm.bedrock import bedrock_usage
    from workers.llm.bedrock import build_body as bedrock_body

    point, long = {"cachePoint": {"type": "default"}}, {"cachePoint": {"type": "default", "ttl": "1h"}}
    request = _request(
        [
            {"role": "system", "content": [{"type": "text", "text": "sys", "cache_control": {"ttl": "1h"}}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a", "cache_control": {}}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d", "cache_control": {}},
        ],
        tools=[MARKED_TOOL],
    )
    claude = bedrock_body(request, "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert claude["system"] == [{"text": "sys"}, long]
    assert claude["messages"] == [
        {"role": "user", "content": [{"text": "a"}, point, {"text": "b"}]},
        {"role": "assistant", "content": [{"text": "c"}]},
        {"role": "user", "content": [{"text": "d"}, point]},
    ]
    assert claude["toolConfig"]["tools"][1] == point  # type: ignore[index]
    nova = bedrock_body(request, "us.amazon.nova-micro-v1:0")
    assert nova["system"] == [{"text": "sys"}, point] and len(nova["toolConfig"]["tools"]) == 1  # type: ignore[index]
    for model in ("meta.llama3-70b-instruct-v1:0", "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/x"):
        assert "cachePoint" not in str(bedrock_body(request, model))
    # auto: after the system prompt (else the tools) and after the conversation so far, four at most
    auto = bedrock_body(
        _request([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], prompt_cache="auto"),
        "anthropic.claude-3-5-haiku-20241022-v1:0",
    )
    assert auto["system"] == [{"text": "s"}, point] and auto["messages"] == [
        {"role": "user", "content": [{"text": "q"}, point]}
    ]
    tools_only = bedrock_body(
        _request([{"role": "user", "content": "q"}], [TOOL], prompt_cache="auto"), "anthropic.claude-x"
    )
    assert tools_only["toolConfig"]["tools"][-1] == point  # type: ignore[index]
    full = bedrock_body(
        ChatRequest(request.messages, RequestParams(max_tokens=10, prompt_cache="auto"), request.tools),
        "anthropic.claude-x",
    )
    assert str(full).count("cachePoint") == 4  # the caller's four: auto adds none
    usage = bedrock_usage(
        {
            "inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 300,
            "cacheDetails": [{"ttl": "1h", "inputTokens": 200}, {"ttl": "5m", "inputTokens": 100}],
        }
    )  # fmt: skip
    assert usage == Usage(
        prompt_tokens=410, completion_tokens=5, cached_tokens=100, cache_write_tokens=300, cache_write_1h_tokens=200
    )


def test_auto_breakpoints_before_a_callers_1h_one_last_an_hour_too() -> None:
    """TTLs must not grow along the prompt (Anthropic and Bedrock refuse a 1h after a 5m): the
    breakpoint ``auto`` adds after the system prompt takes the hour of a later caller breakpoint;
    the one after the conversation, last, stays 5 minutes."""
    from workers.llm.bedrock import build_body as bedrock_body

    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q", "cache_control": {"ttl": "1h"}},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "again"},
    ]
    body = build_body("m", _request(messages, prompt_cache="auto"), stream=False)
    assert body["system"] == [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}  # type: ignore[index]
    converse = bedrock_body(_request(messages, prompt_cache="auto"), "anthropic.claude-x")
    assert converse["system"] == [{"text": "s"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    assert converse["messages"][-1]["content"][-1] == {"cachePoint": {"type": "default"}}  # type: ignore[index]
