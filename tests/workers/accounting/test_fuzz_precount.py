"""Fuzz: generated jobs and message contents through validation, the pre-count and pricing.

Every case ends in a validated job and a plan, or one of our typed errors: never another
exception (a tokenizer panic included), never a hang.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from producers.client import validate_job
from producers.errors import InvalidJobError
from workers.accounting.preflight import plan_call
from workers.accounting.prices import PriceBook
from workers.accounting.tokens import TokenCounter
from workers.contract import CompletionJob
from workers.llm.errors import LLMQError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTER = TokenCounter()
PRICES = PriceBook()

contents = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda c, n: c * n, st.sampled_from([" ", "\n", "a", "漢", "!", "\u0301", " a", "\t\n"]), st.integers(0, 40_000)
    ),
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool", "bogus"]), "content": contents | st.none()},
        optional={"name": st.text(max_size=10), "tool_call_id": st.text(max_size=10)},
    ),
    max_size=4,
)
jobs = st.fixed_dictionaries(
    {"model": st.sampled_from(["openai:gpt-4o", "anthropic:claude-sonnet-4-5", "ollama:llama3.1", "x", "openai:"])},
    optional={
        "messages": messages,
        "template": st.text(max_size=30),
        "variables": st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
        "max_tokens": st.integers(-5, 2_000_000),
        "temperature": st.floats(allow_nan=True),
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "tenant": st.text(max_size=10),
        "id": st.text(max_size=20),
        "deadline_s": st.floats(allow_nan=True, allow_infinity=True),
        "fallbacks": st.lists(st.text(max_size=12), max_size=3),
    },
)


@FUZZ
@given(raw=jobs)
def test_generated_jobs_validate_or_fail_typed_then_precount_and_price_or_fail_typed(raw: dict) -> None:
    try:
        job = validate_job(raw)  # the producer's check
    except InvalidJobError:
        with pytest.raises(ValidationError):
            CompletionJob.model_validate(raw)  # the worker refuses it the same way
        return
    CompletionJob.model_validate_json(job.model_dump_json())  # JSON only on the queue: it round-trips
    for model in job.chain:
        if ":" not in model:
            continue
        try:
            plan = plan_call(
                model, job.messages or [], counter=COUNTER, prices=PRICES, max_tokens=job.max_tokens, tools=job.tools
            )
        except LLMQError as exc:
            assert exc.to_info().type
        else:
            assert plan.prompt.tokens >= 0


@FUZZ
@given(text=contents)
def test_any_message_content_is_counted(text: str) -> None:
    from workers.contract import Message

    for model in ("openai:gpt-4o", "anthropic:claude-sonnet-4-5"):
        count = COUNTER.count(model, [Message(role="user", content=text)])
        assert count.tokens >= 0
