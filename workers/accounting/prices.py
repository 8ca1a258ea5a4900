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
from dataclasses import replace
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.accounting.genaiprices import GenaiPrices, PriceSource, genai_answer, price_sources
from workers.accounting.modelprice import ZERO, ModelPrice
from workers.contract import base_model_name, split_model_id
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
    "genai_answer",
    "price_sources",
]

UnpricedPolicy = Literal["reject", "allow_unpriced"]
#: Providers that run on our own hardware: cost 0 unless the config prices them.
LOCAL_PROVIDERS = frozenset({"ollama"})
_CACHE_MAX = 4096


class PriceOverride(BaseModel):
    """One config entry; other keys of the model's config table are ignored here."""

    model_config = ConfigDict(extra="ignore", frozen=True, from_attributes=True)

    input_per_mtok: float | None = Field(default=None, ge=0)
    output_per_mtok: float | None = Field(default=None, ge=0)
    cache_read_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_1h_per_mtok: float | None = Field(default=None, ge=0)
    context_window: int | None = Field(default=None, gt=0)


_NO_OVERRIDE = PriceOverride()


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
            price = ModelPrice(model, ZERO, ZERO, None, True, "local")
        elif o.input_per_mtok is not None and o.output_per_mtok is not None:
            price = ModelPrice(model, ZERO, ZERO, None, True, "config")
        elif o.input_per_mtok is not None or o.output_per_mtok is not None:
            raise ConfigurationError(
                f"price override for {model} needs both input_per_mtok and output_per_mtok "
                "(genai-prices does not know the model)",
                provider=provider,
                model=name,
                code="invalid_price_override",
            )
        elif self.unpriced == "allow_unpriced":
            price = ModelPrice(model, ZERO, ZERO, None, False, "unpriced")
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
