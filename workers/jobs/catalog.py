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
    return base.model_copy(
        update={
            "providers": providers,
            "priced": {name: prices.table(name) for name in names},
            "free": prices.free_providers(names),
        }
    )
