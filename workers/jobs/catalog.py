"""This worker's model catalog: what names its jobs may use, built once at start and published.

The config's routes, configured models and ``[model_families]``, the providers the registry built,
``LLMQ_DEFAULT_MODEL``, and what the price table knows of each provider. The rule that resolves a
job's names with it is the contract's (:meth:`~workers.contract.catalog.ModelCatalog.resolve`), so
a producer that read this catalog from Redis judges a name exactly as the worker will.
"""

from __future__ import annotations

from workers.accounting.prices import PriceBook
from workers.contract.catalog import ModelCatalog, catalog_from_config
from workers.llm.errors import ConfigurationError
from workers.llm.registry import ProviderRegistry
from workers.routes import LLMQConfig

__all__ = ["worker_catalog"]


def worker_catalog(
    config: LLMQConfig, registry: ProviderRegistry, prices: PriceBook, default_model: str
) -> ModelCatalog:
    """The catalog of this configuration; :class:`ConfigurationError` for a family naming no provider."""
    names = registry.names()
    base = catalog_from_config(config.model_dump(), default_model=default_model)
    providers = {name: base.providers.get(name, name) for name in names}
    for pattern, provider in config.model_families.items():
        if provider not in providers:
            raise ConfigurationError(
                f"[model_families] {pattern!r} = {provider!r}: no such provider (the worker has: {', '.join(names)})"
            )
    catalog = base.model_copy(
        update={
            "providers": providers,
            "priced": {name: prices.table(name) for name in names},
            "free": prices.free_providers(names),
        }
    )
    _check_named(catalog, default_model)
    return catalog


def _check_named(catalog: ModelCatalog, default_model: str) -> None:
    """What the config and ``LLMQ_DEFAULT_MODEL`` name must be models this worker can run: an unknown
    provider, or a name the price table does not know but a priced one is close to (a typo: every job
    reaching it would fail ``unpriced_model``), stops the worker at start, naming where it is written."""
    named = [(f"routes.{alias}", model) for alias, chain in catalog.routes.items() for model in chain]
    if "default" not in catalog.routes:
        named.append(("LLMQ_DEFAULT_MODEL", default_model))
    for where, model in named:
        provider, colon, _ = model.partition(":")
        if not colon:  # a route's members are checked when the config loads: this is the variable
            family = catalog.family_of(model)
            meant = f"; write it '{family.provider}:{model}'" if family is not None else ""
            raise ConfigurationError(f"{where}: {model!r} is not a provider:model id{meant}")
        if provider not in catalog.providers:
            raise ConfigurationError(f"{where}: {catalog.judge(model).error or f'unknown provider {provider!r}'}")
        near = catalog.unpriced_near_miss(model)
        if near is not None:
            raise ConfigurationError(f"{where}: {catalog.unpriced_message(model, near)}")
