"""plan_call: one model's price, count, window gate and worst case, as the chain uses them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from workers.accounting.preflight import plan_call
from workers.accounting.prices import PriceBook
from workers.accounting.tokens import TokenCounter
from workers.contract import Message, Usage
from workers.llm.errors import ConfigurationError, ContextLengthExceededError


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def conversation() -> list[Message]:
    return [
        Message(role="system", content="Be brief."),
        *[Message(role="user" if i % 2 else "assistant", content="word " * 200) for i in range(1, 8)],
        Message(role="user", content="So?"),
    ]


def test_a_fitting_call_has_its_worst_case(counter: TokenCounter) -> None:
    plan = plan_call("openai:gpt-4o", conversation(), counter=counter, prices=PriceBook(), max_tokens=1000)
    assert plan.dropped == 0 and plan.prompt == counter.count("openai:gpt-4o", conversation())
    assert plan.worst_case_usd == (plan.prompt.tokens * Decimal("2.5") + 1000 * Decimal(10)) / 1_000_000
    usage = Usage(prompt_tokens=plan.prompt.tokens, completion_tokens=10)
    assert plan.usage(usage, "ignored", [], counter) is usage
    estimated = plan.usage(None, "Fine.", [], counter)
    assert estimated.estimated and estimated.prompt_tokens == plan.prompt.tokens
    assert plan.cost(estimated) == (plan.prompt.tokens * Decimal("2.5") + estimated.completion_tokens * 10) / 10**6


def test_small_windows_skip_or_trim(counter: TokenCounter) -> None:
    small = PriceBook({"openai:tiny": {"input_per_mtok": 1, "output_per_mtok": 1, "context_window": 900}})
    with pytest.raises(ContextLengthExceededError) as info:
        plan_call("openai:tiny", conversation(), counter=counter, prices=small, max_tokens=100)
    assert info.value.falls_back  # the chain moves on to a model with a larger window
    plan = plan_call(
        "openai:tiny", conversation(), counter=counter, prices=small, max_tokens=100, truncate="sliding_window"
    )
    assert plan.dropped > 0 and plan.prompt.tokens + 100 <= 900
    assert plan.messages[0].role == "system" and plan.messages[-1].content == "So?"


def test_unpriced_models_follow_the_policy(counter: TokenCounter) -> None:
    with pytest.raises(ConfigurationError):
        plan_call("acme:x", conversation(), counter=counter, prices=PriceBook(), max_tokens=10)
    plan = plan_call(
        "acme:x", conversation(), counter=counter, prices=PriceBook(unpriced="allow_unpriced"), max_tokens=10
    )
    assert plan.worst_case_usd is None and plan.prompt.estimated
    assert (
        plan_call("ollama:llama3.1", conversation(), counter=counter, prices=PriceBook(), max_tokens=10).worst_case_usd
        == 0
    )


def test_the_worst_case_counts_max_tokens_for_every_answer(counter: TokenCounter) -> None:
    """``n`` answers can each use ``max_tokens``: the reservation holds all of them; the context
    window holds one (each answer is its own sequence)."""
    one = plan_call("openai:gpt-4o", conversation(), counter=counter, prices=PriceBook(), max_tokens=1000)
    three = plan_call("openai:gpt-4o", conversation(), counter=counter, prices=PriceBook(), max_tokens=1000, answers=3)
    assert one.worst_case_usd is not None and three.worst_case_usd is not None
    assert three.worst_case_usd - one.worst_case_usd == 2 * 1000 * Decimal(10) / 1_000_000
    assert three.max_tokens == 1000 and three.prompt == one.prompt
