"""The context-window gate and the sliding-window trimmer.

Decided from the pre-count, before any HTTP request: a prompt whose tokens plus ``max_tokens``
exceed the model's window is a non-retryable :class:`ContextLengthExceededError` (code
``context_length_exceeded``; it ``falls_back``, since a larger window may fit) unless the job asks
for ``truncate="sliding_window"``. Then the oldest turns are dropped first, with three rules:

- every ``system`` message is kept, in place;
- an assistant message with ``tool_calls`` and the ``tool`` results answering it form one unit,
  dropped or kept together (providers reject a tool result without its call, and vice versa);
- the newest unit is always kept: if the system messages plus that unit still do not fit, the
  job fails with the same error.

Pure functions over a message list and a :class:`~workers.accounting.tokens.TokenCounter`; the fallback chain
uses :func:`fits` with the same counts to skip models that cannot hold the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from workers.accounting.tokens import TokenCount, TokenCounter
from workers.contract import Message, Tool, split_model_id
from workers.llm.errors import ContextLengthExceededError

__all__ = ["FitResult", "check_fit", "fit_messages", "fits", "group_turns"]


@dataclass(frozen=True, slots=True)
class FitResult:
    """What to send: the kept ``messages``, their ``prompt`` count and how many were ``dropped``."""

    messages: list[Message]
    prompt: TokenCount
    dropped: int


def fits(prompt_tokens: int, max_tokens: int, window: int | None) -> bool:
    """True when ``prompt_tokens + max_tokens`` fits ``window`` (an unknown window always fits)."""
    return window is None or prompt_tokens + max_tokens <= window


def _error(
    model: str, prompt_tokens: int, max_tokens: int, window: int, estimated: bool, detail: str = ""
) -> ContextLengthExceededError:
    provider, name = split_model_id(model)
    kind = "~" if estimated else ""
    message = (
        f"prompt of {kind}{prompt_tokens} tokens + max_tokens {max_tokens} exceeds the "
        f"{window}-token context window of {model}{detail}"
    )
    return ContextLengthExceededError(message, provider=provider, model=name, code="context_length_exceeded")


def check_fit(model: str, prompt: TokenCount, max_tokens: int, window: int | None) -> None:
    """Raise :class:`ContextLengthExceededError` unless the prompt fits ``window``."""
    if not fits(prompt.tokens, max_tokens, window):
        assert window is not None
        raise _error(model, prompt.tokens, max_tokens, window, prompt.estimated)


def group_turns(messages: Sequence[Message]) -> tuple[list[int], list[list[int]]]:
    """Split message indices into ``(system, units)``, units in conversation order.

    A unit is one message, except that an assistant message with ``tool_calls`` absorbs the
    ``tool`` messages answering its calls (wherever they come before the next such assistant).
    A tool result whose call is not in the list is a unit of its own.
    """
    system: list[int] = []
    units: list[list[int]] = []
    open_calls: dict[str, list[int]] = {}  # tool_call_id -> the unit holding its call
    for i, m in enumerate(messages):
        if m.role == "system":
            system.append(i)
        elif m.role == "tool" and m.tool_call_id in open_calls:
            open_calls[m.tool_call_id].append(i)
        else:
            unit = [i]
            units.append(unit)
            if m.tool_calls:
                for call in m.tool_calls:
                    open_calls[call.id] = unit
    return system, units


def fit_messages(
    model: str,
    messages: Sequence[Message],
    *,
    counter: TokenCounter,
    max_tokens: int,
    window: int | None,
    tools: Sequence[Tool] = (),
    truncate: Literal["error", "sliding_window"] = "error",
    prompt: TokenCount | None = None,
) -> FitResult:
    """Fit ``messages`` into ``window`` or raise :class:`ContextLengthExceededError`.

    ``prompt`` may pass an existing pre-count of the full list to skip recounting. The common
    case (it fits) costs one :meth:`TokenCounter.count`; trimming counts per message once.
    """
    if prompt is None:
        prompt = counter.count(model, messages, tools)
    if fits(prompt.tokens, max_tokens, window):
        return FitResult(list(messages), prompt, 0)
    assert window is not None
    if truncate != "sliding_window":
        raise _error(model, prompt.tokens, max_tokens, window, prompt.estimated)

    breakdown = counter.breakdown(model, messages, tools)
    per = breakdown.per_message
    _, units = group_turns(messages)  # system messages are in no unit: never dropped
    budget = window - max_tokens
    raw = sum(per)
    dropped: set[int] = set()
    for unit in units[:-1]:  # oldest first; the newest unit is never dropped
        if breakdown.scaled(raw) <= budget:
            break
        raw -= sum(per[i] for i in unit)
        dropped.update(unit)
    total = breakdown.scaled(raw)
    if total > budget:
        raise _error(
            model,
            total,
            max_tokens,
            window,
            breakdown.estimated,
            " even after dropping every turn but the system messages and the last one",
        )
    kept = [m for i, m in enumerate(messages) if i not in dropped]
    return FitResult(kept, TokenCount(total, breakdown.estimated, breakdown.encoding), len(dropped))
