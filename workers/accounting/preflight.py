"""Pre-flight for one model of the chain: price, pre-count, window gate, worst-case cost.

One call per model before any HTTP request. It composes :mod:`workers.accounting.prices`,
:mod:`workers.accounting.tokens` and :mod:`workers.accounting.context_window`, so the fallback chain and the ledger use
the same numbers. A model that cannot hold the prompt raises ``ContextLengthExceededError``
(``falls_back``: skip to the next model); an unpriced model under the "reject" policy raises
``ConfigurationError``. Nothing here touches Redis: the caller reserves ``worst_case_usd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from workers.accounting.context_window import fit_messages
from workers.accounting.prices import ModelPrice, PriceBook
from workers.accounting.tokens import TokenCount, TokenCounter, estimate_usage
from workers.contract import Message, Tool, ToolCall, Usage

__all__ = ["CallPlan", "plan_call"]


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What to send to ``model`` and what it may cost at most (None: unpriced, allowed by policy)."""

    model: str
    price: ModelPrice
    messages: list[Message]
    prompt: TokenCount
    dropped: int
    max_tokens: int
    worst_case_usd: Decimal | None

    def usage(self, reported: Usage | None, text: str, tool_calls: Sequence[ToolCall], counter: TokenCounter) -> Usage:
        """The provider's usage, or our estimate (``estimated=True``) when a stream omitted it."""
        if reported is not None:
            return reported
        return estimate_usage(self.prompt, text, self.model, tool_calls, counter=counter)

    def cost(self, usage: Usage) -> Decimal | None:
        return self.price.cost(usage)


def plan_call(
    model: str,
    messages: Sequence[Message],
    *,
    counter: TokenCounter,
    prices: PriceBook,
    max_tokens: int,
    tools: Sequence[Tool] = (),
    truncate: Literal["error", "sliding_window"] = "error",
    cache_writes: bool = False,
    answers: int = 1,
) -> CallPlan:
    """Price, count and fit ``messages`` for ``model`` (a ``provider:model`` id, not an alias).
    ``answers``: how many the call generates (``n``), each up to ``max_tokens``: the worst case
    counts them all (the context window holds one)."""
    price = prices.lookup(model)
    fit = fit_messages(
        model,
        messages,
        counter=counter,
        max_tokens=max_tokens,
        window=price.context_window,
        tools=tools,
        truncate=truncate,
    )
    worst = price.worst_case_cost(fit.prompt.tokens, max_tokens * answers, cache_writes=cache_writes)
    return CallPlan(model, price, fit.messages, fit.prompt, fit.dropped, max_tokens, worst)
