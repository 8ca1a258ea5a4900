"""What genai-prices knows: the price source of each configured provider, and its answers as :class:`ModelPrice`.

genai-prices ships its data (offline); we only read the bundled snapshot through its public
``calc_price`` and never start ``UpdatePrices`` (a background thread that downloads hourly).
A named provider (``[providers.<name>]``) is looked up by its type's genai-prices provider
(azure, google, aws for Bedrock, anthropic) or, for an OpenAI-compatible server, by its base
URL (genai-prices knows Groq, DeepSeek, Mistral, OpenRouter, Together ... by their API URL).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from workers.accounting.modelprice import ZERO, ModelPrice, Tiers
from workers.contract.catalog import PriceMatch, PriceTable

__all__ = ["GenaiPrices", "PriceSource", "genai_answer", "price_sources"]


@dataclass(frozen=True, slots=True)
class PriceSource:
    """Where genai-prices has a provider's prices: its provider id, or the API URL it matches."""

    provider_id: str | None = None
    api_url: str | None = None
    #: Runs on our own hardware: costs 0 unless the config prices it.
    local: bool = False


#: A provider type -> genai-prices' provider id (``openai`` also matches compatible servers by URL).
_GENAI_PROVIDER = {"openai": "openai", "azure": "azure", "anthropic": "anthropic", "gemini": "google", "bedrock": "aws"}


def price_sources(specs: Mapping[str, Any]) -> dict[str, PriceSource]:
    """The price source of each ``[providers.<name>]`` entry (``ProviderSpec``-like: type, base_url)."""
    out: dict[str, PriceSource] = {}
    for name, spec in specs.items():
        if spec.type == "ollama":
            out[name] = PriceSource(local=True)
        elif spec.type == "openai" and spec.base_url:
            out[name] = PriceSource(api_url=spec.base_url)
        else:
            out[name] = PriceSource(provider_id=_GENAI_PROVIDER[spec.type])
    return out


class GenaiPrices:
    """What genai-prices says of a model name or a provider's names (imported on the first question).

    The seam of a :class:`PriceBook`: ``workers/accounting/pricehandover.py`` answers from what
    ``llmq worker`` worked out before its exec, and asks this for anything else."""

    def lookup(self, source: PriceSource, name: str) -> ModelPrice | None:
        return _genai_lookup(source, name)

    def table(self, source: PriceSource) -> PriceTable:
        return _genai_table(source)


def _split(price: Any) -> tuple[Decimal, Tiers]:
    """A genai-prices value (Decimal, TieredPrices or None) as ``(base, tiers)``."""
    if price is None:
        return ZERO, ()
    if isinstance(price, Decimal):
        return price, ()
    return price.base, tuple((t.start, t.price) for t in price.tiers)


def _genai_table(source: PriceSource) -> PriceTable:
    """genai-prices' model ids for a price source and its match rules, flattened (empty when unknown)."""
    if source.local:
        return PriceTable()
    from genai_prices import data_snapshot

    try:
        found = data_snapshot.get_snapshot().find_provider(None, source.provider_id, source.api_url)
    except LookupError:
        return PriceTable()
    rules: list[PriceMatch] = []
    for model in found.models:
        _flatten(model.match, rules)
    return PriceTable(names=sorted({m.id for m in found.models}), matches=rules)


_CLAUSE_FIELDS = (
    ("equals", "equals"),
    ("starts_with", "starts_with"),
    ("ends_with", "ends_with"),
    ("contains", "contains"),
    ("regex", "regex"),
)


def _flatten(clause: Any, out: list[PriceMatch]) -> None:
    """A genai-prices clause tree as flat rules (``or`` and ``and`` alike: looser, never stricter)."""
    for attr in ("or_", "and_"):
        parts = getattr(clause, attr, None)
        if parts is not None:
            for part in parts:
                _flatten(part, out)
            return
    for attr, kind in _CLAUSE_FIELDS:
        text = getattr(clause, attr, None)
        if isinstance(text, str):
            out.append(PriceMatch(kind=kind, text=text))  # type: ignore[arg-type]
            return
    out.append(PriceMatch(kind="regex", text=""))  # a clause of a kind unknown here matches every name


def _genai_lookup(source: PriceSource, name: str) -> ModelPrice | None:
    """The bundled genai-prices entry, via its public ``calc_price`` (zero usage), or None."""
    return genai_answer(source, name)[0]


def genai_answer(source: PriceSource, name: str) -> tuple[ModelPrice | None, bool]:
    """:func:`_genai_lookup`'s answer, and whether it is *steady*: the same whenever it is asked from
    now on (a price with a time-of-day condition, or one that changes on a date still ahead, is not)."""
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    try:
        usage = GenaiUsage(input_tokens=0, output_tokens=0)
        if source.provider_id is None and source.api_url:  # an OpenAI-compatible server, by its URL
            calc = calc_price(usage, model_ref=name, provider_api_url=source.api_url)
        else:
            calc = calc_price(usage, model_ref=name, provider_id=source.provider_id)
    except LookupError:
        return None, True
    steady = _steady(calc.model.prices)
    provider = source.provider_id or calc.provider.id
    mp = calc.model_price
    input_raw, output_raw = getattr(mp, "input_mtok", None), getattr(mp, "output_mtok", None)
    if input_raw is None and output_raw is None:
        return None, steady
    base_in, tiers_in = _split(input_raw)
    base_out, tiers_out = _split(output_raw)
    read, write = getattr(mp, "cache_read_mtok", None), getattr(mp, "cache_write_mtok", None)
    price = ModelPrice(
        f"{provider}:{name}",
        base_in,
        base_out,
        calc.model.context_window,
        True,
        "genai-prices",
        calc.model.id,
        tiers_in,
        tiers_out,
        _split(read) if read is not None else None,
        _split(write) if write is not None else None,
    )
    return price, steady


def _steady(prices: Any) -> bool:
    """Whether a genai-prices model's ``prices`` (one price, or conditional prices: the last active
    one applies) choose the same price at any time from now on: each condition is none or a start
    date already reached (a time of day, or a date ahead, changes the choice)."""
    if not isinstance(prices, list):
        return True
    today = datetime.now(UTC).date()
    for conditional in prices:
        constraint = conditional.constraint
        if constraint is None:
            continue
        start = getattr(constraint, "start_date", None)
        if start is None or hasattr(constraint, "start_time") or start > today:
            return False
    return True
