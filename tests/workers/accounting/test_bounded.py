"""Bounded pre-counts: exact on ordinary text, bounded (and labelled) on hostile text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.accounting.bounded import CHUNK_CHARS, bounded_len, chunks
from workers.accounting.tokens import TokenCounter
from workers.contract import Message, RequestParams
from workers.llm.base import ChatRequest

PROSE = (
    "The quick brown fox jumps over the lazy dog; it's 2026 and queues still matter.\n"
    "  Indented line with  double  spaces, numbers 1234567 and punctuation!!! ...\n\n"
    "def handler(event):\n    return {'ok': True, 'n': 42}\n"
)


@pytest.fixture(scope="module", params=[False, True], ids=["tiktoken", "compact"])
def counter(request: pytest.FixtureRequest) -> TokenCounter:
    """tiktoken's counts, and the worker's (``compact=True``: :class:`CompactBPE`)."""
    c = TokenCounter(compact=request.param)
    c.preload()
    return c


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_long_ordinary_text_is_counted_exactly_in_chunks(counter: TokenCounter, encoding: str) -> None:
    enc = TokenCounter.encoding(encoding)
    text = PROSE * 200  # ~40k characters: many chunks, every cut at a clean boundary
    assert len(chunks(text)[0]) > 10
    assert bounded_len(counter.lengths(encoding), [text]) == (len(enc.encode_ordinary(text)), True)


def test_a_million_spaces_are_counted_without_a_panic_and_labelled_estimates(counter: TokenCounter) -> None:
    spaces = " " * 1_000_000
    count = counter.count("openai:gpt-4o", [Message(role="user", content=spaces)])
    assert count.estimated  # hard cuts inside the run
    assert 7_000 < count.tokens < 20_000  # tiktoken gives 7813 for 1M spaces when it can count them in pieces
    # the tool definitions go through the same bounded path
    tool = {"type": "function", "function": {"name": "f", "description": spaces}}
    from workers.contract import Tool

    assert (
        counter.count("openai:gpt-4o", [Message(role="user", content="x")], [Tool.model_validate(tool)]).tokens > 7_000
    )


def test_text_over_the_size_cap_counts_one_token_per_byte_beyond_it(counter: TokenCounter) -> None:
    enc = TokenCounter.encoding("o200k_base")
    head, tail = "word " * 20, "é" * 50
    tokens, exact = bounded_len(counter.lengths("o200k_base"), [head + tail], max_chars=len(head))
    assert not exact
    assert tokens == len(enc.encode_ordinary(head)) + len(tail.encode())  # an upper bound for the rest


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(
        alphabet=st.sampled_from([" ", "\n", "\t", "a", "Z", "é", "漢", "1", "!", "'", "\u0301", "\ud800", "<"]),
        max_size=4 * CHUNK_CHARS,
    )
)
def test_chunks_cover_the_text_and_clean_cuts_keep_the_count_exact(text: str) -> None:
    enc = TokenCounter.encoding("o200k_base")
    pieces, clean = chunks(text)
    assert "".join(pieces) == text and all(0 < len(p) <= CHUNK_CHARS for p in pieces if text)
    for compact in (False, True):
        tokens, exact = bounded_len(TokenCounter(compact=compact).lengths("o200k_base"), [text])
        assert exact == clean
        if exact:  # short enough here for tiktoken to count the whole text at once
            assert tokens == len(enc.encode_ordinary(text))


class _Panic(BaseException):
    """Stands for ``pyo3_runtime.PanicException``: a native library's panic, not an ``Exception``."""


class _PanickingCounter(TokenCounter):
    def count(self, model: str, messages, tools=()):  # type: ignore[no-untyped-def, override]
        raise _Panic("called `Result::unwrap()` on an `Err` value: RuntimeError(StackOverflow)")


@pytest.mark.parametrize("stream", [True, False])
def test_a_panic_while_pre_counting_ends_the_call_with_a_typed_error(stream: bool) -> None:
    from workers.accounting.metered import Meter, MeteredModel
    from workers.accounting.prices import PriceBook
    from workers.contract import CompletionJob
    from workers.llm.errors import PreparationError
    from workers.llm.fallback import FallbackModel
    from workers.llm.model import RunContext
    from workers.llm.retry import RetryingModel, RetryPolicy

    job = CompletionJob(model="openai:gpt-4o", messages=[Message(role="user", content="hi")])
    ctx = RunContext()
    meter = Meter(job, _PanickingCounter(), PriceBook(), None, ctx)

    from tests.workers.llm.test_wrappers import ScriptedModel

    a, b = ScriptedModel("openai:gpt-4o", [["never"]]), ScriptedModel("openai:gpt-4o-mini", [["never"]])
    chain = FallbackModel([RetryingModel(MeteredModel(m, meter), RetryPolicy(), ctx) for m in (a, b)], ctx)
    request = ChatRequest(messages=list(job.messages or []), params=RequestParams(max_tokens=10))
    with pytest.raises(PreparationError) as info:
        if stream:
            list(chain.stream(request))
        else:
            chain.complete(request)
    assert "_Panic" in info.value.message and a.calls == 0 and b.calls == 0  # not retried, not fallen back
    assert info.value.to_info().type == "preparation_failed" and not info.value.is_retryable
