"""A model's price: rates per million tokens, threshold tiers, prompt-cache rates, and what a call costs.

Costs are :class:`~decimal.Decimal` USD. Handy identity: tokens × USD-per-MTok = micro-USD.
Where the rates come from (genai-prices, config overrides, local = free) is
``workers/accounting/prices.py``'s concern.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from workers.contract import Usage

__all__ = ["ZERO", "ModelPrice", "Tiers"]

ZERO = Decimal(0)
_MTOK = Decimal(1_000_000)

Tiers = tuple[tuple[int, Decimal], ...]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Rates in USD per million tokens, the context window (None = unknown), and provenance.

    ``source`` is ``"genai-prices"``, ``"config"``, ``"local"`` or ``"unpriced"``. Tiers are
    genai-prices' threshold tiers: once the prompt exceeds ``start`` tokens, that rate applies
    to every token of the request. Prompt-cache rates (``cache_read``/``cache_write``, each a
    base rate and its tiers) apply to the tokens :class:`Usage` reports as read from or written
    to the cache; ``None`` bills those at the input rate.
    """

    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    context_window: int | None
    priced: bool
    source: str
    resolved_id: str | None = None
    input_tiers: Tiers = ()
    output_tiers: Tiers = ()
    cache_read: tuple[Decimal, Tiers] | None = None
    cache_write: tuple[Decimal, Tiers] | None = None
    #: The 1-hour write rate; None: twice the input rate (Anthropic's rule: 2x input for a 1-hour
    #: write, 1.25x for a 5-minute one).
    cache_write_1h: tuple[Decimal, Tiers] | None = None

    def rates(self, prompt_tokens: int) -> tuple[Decimal, Decimal]:
        """``(input, output)`` USD/MTok applicable to a request with ``prompt_tokens``."""
        return _tier(self.input_per_mtok, self.input_tiers, prompt_tokens), _tier(
            self.output_per_mtok, self.output_tiers, prompt_tokens
        )

    def token_cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> Decimal | None:
        """USD for these counts, or None when the model is unpriced.

        ``cached_tokens`` and ``cache_write_tokens`` are part of ``prompt_tokens``; the tier is
        chosen by the whole prompt.
        """
        if not self.priced:
            return None
        rate_in, rate_out = self.rates(prompt_tokens)
        cached = min(max(cached_tokens, 0), prompt_tokens)
        written = min(max(cache_write_tokens, 0), prompt_tokens - cached)
        total = (prompt_tokens - cached - written) * rate_in + completion_tokens * rate_out
        if cached:
            total += cached * (_tier(*self.cache_read, prompt_tokens) if self.cache_read else rate_in)
        long = min(max(cache_write_1h_tokens, 0), written)
        if written - long:
            total += (written - long) * self.write_rate(prompt_tokens)
        if long:
            total += long * self.write_1h_rate(prompt_tokens)
        return total / _MTOK

    def write_rate(self, prompt_tokens: int) -> Decimal:
        """USD/MTok of a 5-minute cache write (the input rate when unknown)."""
        rate_in = self.rates(prompt_tokens)[0]
        return _tier(*self.cache_write, prompt_tokens) if self.cache_write else rate_in

    def write_1h_rate(self, prompt_tokens: int) -> Decimal:
        """USD/MTok of a 1-hour cache write (twice the input rate unless priced)."""
        return _tier(*self.cache_write_1h, prompt_tokens) if self.cache_write_1h else 2 * self.rates(prompt_tokens)[0]

    def worst_case_cost(self, prompt_tokens: int, max_tokens: int, *, cache_writes: bool = False) -> Decimal | None:
        """What a call can cost at most: the whole prompt (nothing cached) plus ``max_tokens`` of output;
        with ``cache_writes`` (the request marks prompt-cache breakpoints) the whole prompt written
        to the cache at the dearest write rate."""
        if not cache_writes or not self.priced:
            return self.token_cost(prompt_tokens, max_tokens)
        rate_in, rate_out = self.rates(prompt_tokens)
        dearest = max(rate_in, self.write_rate(prompt_tokens), self.write_1h_rate(prompt_tokens))
        return (prompt_tokens * dearest + max_tokens * rate_out) / _MTOK

    def cost(self, usage: Usage) -> Decimal | None:
        """USD for actual (or estimated) usage; None when the model is unpriced."""
        return self.token_cost(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            usage.cache_write_1h_tokens,
        )


def _tier(base: Decimal, tiers: Tiers, prompt_tokens: int) -> Decimal:
    for start, price in reversed(tiers):
        if prompt_tokens > start:
            return price
    return base
