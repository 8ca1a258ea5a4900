"""The context-window gate and the sliding-window trimmer."""

from __future__ import annotations

import pytest

from workers.accounting.context_window import check_fit, fit_messages, fits, group_turns
from workers.accounting.tokens import TokenCount, TokenCounter
from workers.contract import FunctionCall, Message, ToolCall
from workers.llm.errors import ContextLengthExceededError, is_retryable

MODEL = "openai:gpt-4o"


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def user(text: str) -> Message:
    return Message(role="user", content=text)


def assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def call(call_id: str) -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name="lookup", arguments='{"q": "x"}'))


def long(n: int) -> str:
    return " ".join(["word"] * n)


def conversation() -> list[Message]:
    return [
        Message(role="system", content="You are terse."),
        user(long(100)),  # 1
        assistant(long(100)),  # 2
        Message(role="assistant", content=None, tool_calls=[call("c1"), call("c2")]),  # 3
        Message(role="tool", tool_call_id="c1", content=long(50)),  # 4
        Message(role="tool", tool_call_id="c2", content=long(50)),  # 5
        Message(role="system", content="Tools answered."),  # 6
        user(long(100)),  # 7
        assistant(long(100)),  # 8
        user("And now?"),  # 9
    ]


def test_fits_and_unknown_windows() -> None:
    assert fits(100, 28, 128)
    assert not fits(100, 29, 128)
    assert fits(10**9, 10**9, None)


def test_check_fit_raises_a_non_retryable_context_error() -> None:
    with pytest.raises(ContextLengthExceededError) as info:
        check_fit(MODEL, TokenCount(1000, False, "o200k_base"), 200, 1100)
    err = info.value
    assert not is_retryable(err) and err.falls_back
    assert err.code == "context_length_exceeded" and (err.provider, err.model) == ("openai", "gpt-4o")
    assert "1000 tokens + max_tokens 200" in err.message and "1100-token" in err.message
    with pytest.raises(ContextLengthExceededError, match="~1000"):
        check_fit("anthropic:claude-sonnet-4-5", TokenCount(1000, True, "cl100k_base"), 200, 1100)


def test_group_turns_keeps_tool_calls_with_their_results() -> None:
    system, units = group_turns(conversation())
    assert system == [0, 6]
    assert units == [[1], [2], [3, 4, 5], [7], [8], [9]]


def test_orphan_tool_results_are_their_own_unit() -> None:
    messages = [Message(role="tool", tool_call_id="gone", content="42"), user("ok")]
    assert group_turns(messages) == ([], [[0], [1]])


def test_a_fitting_prompt_is_untouched(counter: TokenCounter) -> None:
    messages = conversation()
    result = fit_messages(MODEL, messages, counter=counter, max_tokens=100, window=128_000)
    assert result.messages == messages and result.dropped == 0
    assert result.prompt == counter.count(MODEL, messages)


def test_truncate_error_raises(counter: TokenCounter) -> None:
    messages = conversation()
    total = counter.count(MODEL, messages).tokens
    with pytest.raises(ContextLengthExceededError):
        fit_messages(MODEL, messages, counter=counter, max_tokens=100, window=total + 99)


def test_sliding_window_drops_oldest_first_and_keeps_system(counter: TokenCounter) -> None:
    messages = conversation()
    total = counter.count(MODEL, messages).tokens
    # room for everything but the first user turn
    result = fit_messages(
        MODEL, messages, counter=counter, max_tokens=100, window=total + 99, truncate="sliding_window"
    )
    assert result.dropped == 1
    assert result.messages == [messages[0], *messages[2:]]
    assert result.prompt == counter.count(MODEL, result.messages)
    assert result.prompt.tokens + 100 <= total + 99


def test_sliding_window_never_splits_a_tool_call_from_its_results(counter: TokenCounter) -> None:
    messages = conversation()
    without_first_two = [messages[0], *messages[3:]]
    # a window where dropping 1 and 2 is not enough: the tool group must go as a whole
    window = counter.count(MODEL, without_first_two).tokens - 1 + 100
    result = fit_messages(MODEL, messages, counter=counter, max_tokens=100, window=window, truncate="sliding_window")
    assert result.dropped == 5
    assert result.messages == [messages[0], messages[6], messages[7], messages[8], messages[9]]
    kept_ids = {m.tool_call_id for m in result.messages if m.role == "tool"}
    called = {c.id for m in result.messages for c in (m.tool_calls or [])}
    assert kept_ids == called == set()


def test_minimal_set_is_system_plus_last_turn(counter: TokenCounter) -> None:
    messages = conversation()
    minimal = [messages[0], messages[6], messages[9]]
    window = counter.count(MODEL, minimal).tokens + 100
    result = fit_messages(MODEL, messages, counter=counter, max_tokens=100, window=window, truncate="sliding_window")
    assert result.messages == minimal and result.dropped == 7
    with pytest.raises(ContextLengthExceededError, match="even after dropping"):
        fit_messages(MODEL, messages, counter=counter, max_tokens=100, window=window - 1, truncate="sliding_window")


def test_the_last_unit_may_be_a_tool_group(counter: TokenCounter) -> None:
    messages = conversation()[:6]  # ends with the tool results: the agent loop continues
    minimal = [messages[0], *messages[3:6]]
    window = counter.count(MODEL, minimal).tokens + 10
    result = fit_messages(MODEL, messages, counter=counter, max_tokens=10, window=window, truncate="sliding_window")
    assert result.messages == minimal and result.dropped == 2


def test_estimated_models_trim_with_their_margin(counter: TokenCounter) -> None:
    model = "anthropic:claude-sonnet-4-5"
    messages = conversation()
    total = counter.count(model, messages)
    assert total.estimated
    result = fit_messages(
        model, messages, counter=counter, max_tokens=50, window=total.tokens + 49, truncate="sliding_window"
    )
    assert result.dropped >= 1
    assert result.prompt == counter.count(model, result.messages)
    assert result.prompt.estimated and result.prompt.tokens + 50 <= total.tokens + 49


def test_a_precount_can_be_reused(counter: TokenCounter) -> None:
    messages = [user("hi")]
    fake = TokenCount(10**6, False, "o200k_base")  # the caller's count is trusted
    with pytest.raises(ContextLengthExceededError):
        fit_messages(MODEL, messages, counter=counter, max_tokens=1, window=1000, prompt=fake)
