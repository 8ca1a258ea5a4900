"""Prices and context windows per ``provider:model``: genai-prices, config overrides, local = free.

genai-prices ships its data (offline); we only read the bundled snapshot through its public
``calc_price`` and never start ``UpdatePrices`` (a background thread that downloads hourly).

Resolution order for a model id:

1. a config override for the exact id, else for ``provider:*`` (prices and/or context window;
   fields it leaves out come from genai-prices when it knows the model);
2. local providers (``ollama`` by default) cost 0;
3. genai-prices, by ``provider_id`` = our provider prefix and ``model_ref`` = the model name
   (it resolves dated and undated names: ``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``);
   a named provider (``[providers.<name>]``) is looked up by its type's genai-prices provider
   (azure, google, aws for Bedrock, anthropic) or, for an OpenAI-compatible server, by its base
   URL (genai-prices knows Groq, DeepSeek, Mistral, OpenRouter, Together ... by their API URL);
4. otherwise the model is *unpriced*, and the policy decides: ``"reject"`` (default) raises
   :class:`ConfigurationError` with code ``unpriced_model``; ``"allow_unpriced"`` returns a
   :class:`ModelPrice` with ``priced=False`` whose costs are ``None`` — never a silent 0.

Why ``ConfigurationError`` and not ``BudgetExceededError``: nothing was overspent; the fix is a
price in the config (or the explicit policy), and budget alerts must not fire for a typo in a
model name. Both are non-retryable.

Costs are :class:`~decimal.Decimal` USD. Handy identity: tokens × USD-per-MTok = micro-USD.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.contract import Usage, base_model_name, split_model_id
from workers.contract.catalog import PriceMatch, PriceTable, close_names
from workers.llm.errors import ConfigurationError

__all__ = [
    "LOCAL_PROVIDERS",
    "GenaiPrices",
    "ModelPrice",
    "PriceBook",
    "PriceOverride",
    "PriceSource",
    "UnpricedPolicy",
    "price_sources",
]

UnpricedPolicy = Literal["reject", "allow_unpriced"]
#: Providers that run on our own hardware: cost 0 unless the config prices them.
LOCAL_PROVIDERS = frozenset({"ollama"})
_CACHE_MAX = 4096
_ZERO = Decimal(0)
_MTOK = Decimal(1_000_000)

Tiers = tuple[tuple[int, Decimal], ...]


class PriceOverride(BaseModel):
    """One config entry; other keys of the model's config table are ignored here."""

    model_config = ConfigDict(extra="ignore", frozen=True, from_attributes=True)

    input_per_mtok: float | None = Field(default=None, ge=0)
    output_per_mtok: float | None = Field(default=None, ge=0)
    cache_read_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_1h_per_mtok: float | None = Field(default=None, ge=0)
    context_window: int | None = Field(default=None, gt=0)


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


def _split(price: Any) -> tuple[Decimal, Tiers]:
    """A genai-prices value (Decimal, TieredPrices or None) as ``(base, tiers)``."""
    if price is None:
        return _ZERO, ()
    if isinstance(price, Decimal):
        return price, ()
    return price.base, tuple((t.start, t.price) for t in price.tiers)


_NO_OVERRIDE = PriceOverride()


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


class PriceBook:
    """Looks up and caches :class:`ModelPrice` per model id. Thread-safe; one per process.

    ``overrides`` maps ``provider:model`` (or ``provider:*``) to a mapping or object with
    ``input_per_mtok``, ``output_per_mtok`` and/or ``context_window`` (the config's
    ``[models."..."]`` tables can be passed as they are). ``genai`` answers what genai-prices
    knows (default: the library itself); the overrides are applied here, on top of its answers.
    """

    def __init__(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        unpriced: UnpricedPolicy = "reject",
        local_providers: frozenset[str] = LOCAL_PROVIDERS,
        sources: Mapping[str, PriceSource] | None = None,
        genai: GenaiPrices | None = None,
    ) -> None:
        if unpriced not in ("reject", "allow_unpriced"):
            raise ConfigurationError(f"unpriced policy must be 'reject' or 'allow_unpriced', not {unpriced!r}")
        self.unpriced = unpriced
        self.local_providers = local_providers
        #: Named providers' price sources (``price_sources``); others are looked up by their name.
        self._sources = dict(sources or {})
        self._genai = genai or GenaiPrices()
        self._overrides: dict[str, PriceOverride] = {}
        for key, value in (overrides or {}).items():
            try:
                override = PriceOverride.model_validate(value)
            except ValidationError as exc:
                raise ConfigurationError(f"invalid price override for {key!r}: {exc}") from None
            if override != _NO_OVERRIDE:
                self._overrides[key] = override
        self._cache: dict[str, ModelPrice | None] = {}
        self._lock = threading.Lock()

    def lookup(self, model: str) -> ModelPrice:
        """The price of ``model``; raises ``ConfigurationError`` for an unpriced model under "reject"."""
        try:
            price = self._cache[model]
        except KeyError:
            with self._lock:
                price = self._cache[model] if model in self._cache else self._resolve(model)
                if len(self._cache) < _CACHE_MAX:  # model ids come from jobs: bound the memory
                    self._cache[model] = price
        if price is None:  # only cached under "reject"; a fresh error each time
            provider, name = split_model_id(model)
            close = close_names(base_model_name(name).lower(), self.table(provider).names, cutoff=0.8)
            hint = f" (did you mean {provider}:{close[0]}?)" if close else ""
            raise ConfigurationError(
                f"no price known for {model}{hint}: a model the price table does not know needs "
                f'input_per_mtok/output_per_mtok under [models."{model}"] in the config, or [budget] '
                'unpriced = "allow_unpriced"',
                provider=provider,
                model=name,
                code="unpriced_model",
            )
        return price

    def table(self, provider: str) -> PriceTable:
        """What this book knows of ``provider``'s model names (for suggestions, and producers' checks)."""
        names = [key.partition(":")[2] for key in self._overrides if key.startswith(f"{provider}:")]
        matches = [PriceMatch(kind="equals", text=name) for name in names if name != "*"]
        genai = self._genai.table(self._source(provider))
        return PriceTable(names=sorted({*names, *genai.names} - {"*"}), matches=[*matches, *genai.matches])

    def free_providers(self, providers: list[str]) -> list[str]:
        """Those of ``providers`` whose every model has a price (local, or a ``provider:*`` price)."""
        out = []
        for provider in providers:
            wildcard = self._overrides.get(f"{provider}:*")
            priced = (
                wildcard is not None and wildcard.input_per_mtok is not None and wildcard.output_per_mtok is not None
            )
            if self._is_local(provider) or priced:
                out.append(provider)
        return out

    def _source(self, provider: str) -> PriceSource:
        return self._sources.get(provider) or PriceSource(provider_id=provider)

    def _is_local(self, provider: str) -> bool:
        return self._source(provider).local or (provider in self.local_providers and provider not in self._sources)

    def context_window(self, model: str) -> int | None:
        return self.lookup(model).context_window

    def _resolve(self, model: str) -> ModelPrice | None:
        provider, name = split_model_id(model)
        base = f"{provider}:{base_model_name(name)}"
        o = (
            self._overrides.get(model)
            or self._overrides.get(base)
            or self._overrides.get(f"{provider}:*")
            or _NO_OVERRIDE
        )
        source = self._source(provider)
        local = self._is_local(provider)
        known = None if local else self._genai.lookup(source, base_model_name(name))
        if known is not None:
            price = replace(known, model=model)
        elif local:
            price = ModelPrice(model, _ZERO, _ZERO, None, True, "local")
        elif o.input_per_mtok is not None and o.output_per_mtok is not None:
            price = ModelPrice(model, _ZERO, _ZERO, None, True, "config")
        elif o.input_per_mtok is not None or o.output_per_mtok is not None:
            raise ConfigurationError(
                f"price override for {model} needs both input_per_mtok and output_per_mtok "
                "(genai-prices does not know the model)",
                provider=provider,
                model=name,
                code="invalid_price_override",
            )
        elif self.unpriced == "allow_unpriced":
            price = ModelPrice(model, _ZERO, _ZERO, None, False, "unpriced")
        else:
            return None
        changes: dict[str, Any] = {}
        if o.input_per_mtok is not None:
            changes.update(input_per_mtok=Decimal(str(o.input_per_mtok)), input_tiers=(), source="config")
        if o.output_per_mtok is not None:
            changes.update(output_per_mtok=Decimal(str(o.output_per_mtok)), output_tiers=(), source="config")
        if o.cache_read_per_mtok is not None:
            changes.update(cache_read=(Decimal(str(o.cache_read_per_mtok)), ()), source="config")
        if o.cache_write_per_mtok is not None:
            changes.update(cache_write=(Decimal(str(o.cache_write_per_mtok)), ()), source="config")
        if o.cache_write_1h_per_mtok is not None:
            changes.update(cache_write_1h=(Decimal(str(o.cache_write_1h_per_mtok)), ()), source="config")
        if o.context_window is not None:
            changes["context_window"] = o.context_window
        return replace(price, **changes) if changes else price


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
