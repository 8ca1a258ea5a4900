"""genai-prices' answers worked out by ``llmq worker`` before its exec, handed to the worker process.

genai-prices' data snapshot and models are ~7 MB of a worker process (``bench/worker_footprint.py``:
5.6 MB less after start). ``llmq worker`` asks genai-prices what the worker's start and its default
model's jobs will ask (each price of the models it names, each provider's table of names:
:func:`handover`) and puts the answers, as compact JSON, in :data:`PRICES_ENV`; the worker's
:class:`~workers.accounting.prices.PriceBook` answers those from it (:func:`handed_over`) and
imports genai-prices only for a question not handed over (another model, a did-you-mean over a
provider whose table was left out). A worker started another way (``celery``,
the tests' in-process workers) has no handover and asks the library, as before.

Only genai-prices' own answers travel, never a price of the config: the worker applies its config's
overrides on top, exactly as to the library's answers. Only *steady* answers travel (the same at any
time from now on: :func:`~workers.accounting.genaiprices.genai_answer`), so a price with a time-of-day or a
future-date condition is still chosen when it is asked. The JSON is bounded (:data:`HANDOVER_MAX_BYTES`,
under Linux's 128 KiB limit of one environment string): tables that do not fit are left out.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping, MutableMapping
from decimal import Decimal
from typing import Any

from workers.accounting.genaiprices import GenaiPrices, PriceSource, genai_answer
from workers.accounting.modelprice import ModelPrice, Tiers
from workers.accounting.prices import PriceBook, UnpricedPolicy
from workers.contract.catalog import PriceTable

__all__ = ["HANDOVER_MAX_BYTES", "PRICES_ENV", "HandedOver", "handed_over", "handover"]

#: The handover's variable, set by ``llmq worker`` before its exec (``llmq/commands/worker.py``).
PRICES_ENV = "LLMQ_PRELOAD_PRICES"
HANDOVER_MAX_BYTES = 96 * 1024
_VERSION = 1

_Key = tuple[str | None, str | None]


def _key(source: PriceSource) -> _Key:
    return source.provider_id, source.api_url


class HandedOver(GenaiPrices):
    """Answers what was handed over; asks genai-prices (``library``) for the rest."""

    def __init__(
        self,
        prices: Mapping[tuple[str | None, str | None, str], ModelPrice | None],
        tables: Mapping[_Key, PriceTable],
        library: GenaiPrices | None = None,
    ) -> None:
        self._prices = dict(prices)
        self._tables = dict(tables)
        self._library = library or GenaiPrices()

    def lookup(self, source: PriceSource, name: str) -> ModelPrice | None:
        key = (*_key(source), name)
        if key in self._prices:
            return self._prices[key]
        return self._library.lookup(source, name)

    def table(self, source: PriceSource) -> PriceTable:
        found = self._tables.get(_key(source))
        return found if found is not None else self._library.table(source)


class _Recorder(GenaiPrices):
    """Asks the library and keeps its steady answers, in the order asked."""

    def __init__(self) -> None:
        self.prices: dict[tuple[str | None, str | None, str], ModelPrice | None] = {}
        self.tables: dict[_Key, PriceTable] = {}

    def lookup(self, source: PriceSource, name: str) -> ModelPrice | None:
        price, steady = genai_answer(source, name)
        if steady:
            self.prices[(*_key(source), name)] = price
        return price

    def table(self, source: PriceSource) -> PriceTable:
        table = super().table(source)
        if not source.local:
            self.tables[_key(source)] = table
        return table


def handover(
    overrides: Mapping[str, Any] | None,
    *,
    unpriced: UnpricedPolicy,
    sources: Mapping[str, PriceSource],
    models: Iterable[str],
    providers: Iterable[str],
    max_bytes: int = HANDOVER_MAX_BYTES,
) -> str:
    """The JSON of genai-prices' answers to what a price book built like the worker's asks when it
    looks up ``models`` and the tables of ``providers`` (errors are the worker's to report: skipped).
    Prices first; each table only while the whole fits in ``max_bytes``; "" when nothing fits."""
    recorder = _Recorder()
    book = PriceBook(overrides, unpriced=unpriced, sources=sources, genai=recorder)
    for model in models:
        with contextlib.suppress(Exception):
            book.lookup(model)
    for provider in providers:
        with contextlib.suppress(Exception):
            book.table(provider)
    doc: dict[str, Any] = {
        "v": _VERSION,
        "prices": [[pid, url, name, _price_json(p)] for (pid, url, name), p in recorder.prices.items()],
        "tables": [],
    }
    text = _dumps(doc)
    if len(text) > max_bytes:
        return ""
    for (pid, url), table in recorder.tables.items():
        doc["tables"].append([pid, url, table.model_dump(mode="json")])
        longer = _dumps(doc)
        if len(longer) > max_bytes:
            doc["tables"].pop()
            continue
        text = longer
    return text


def handed_over(
    environ: MutableMapping[str, str] | None = None, library: GenaiPrices | None = None
) -> HandedOver | None:
    """The answers ``llmq worker`` handed over in :data:`PRICES_ENV` (taken out of the environment: a
    process the worker starts does not inherit them), or None without (or with an unreadable) one."""
    env = os.environ if environ is None else environ
    text = env.pop(PRICES_ENV, "")
    if not text:
        return None
    try:
        doc = json.loads(text)
        if doc.get("v") != _VERSION:
            return None
        prices = {(pid, url, name): _price_from(raw) for pid, url, name, raw in doc["prices"]}
        tables = {(pid, url): PriceTable.model_validate(raw) for pid, url, raw in doc["tables"]}
    except (ValueError, TypeError, KeyError, ArithmeticError):
        return None  # the library answers everything, as without a handover
    return HandedOver(prices, tables, library)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _tiers_json(tiers: Tiers) -> list[list[Any]]:
    return [[start, str(rate)] for start, rate in tiers]


def _tiers_from(raw: list[list[Any]]) -> Tiers:
    return tuple((int(start), Decimal(rate)) for start, rate in raw)


def _rate_json(rate: tuple[Decimal, Tiers] | None) -> list[Any] | None:
    return None if rate is None else [str(rate[0]), _tiers_json(rate[1])]


def _rate_from(raw: list[Any] | None) -> tuple[Decimal, Tiers] | None:
    return None if raw is None else (Decimal(raw[0]), _tiers_from(raw[1]))


def _price_json(price: ModelPrice | None) -> dict[str, Any] | None:
    """Every field of a :class:`ModelPrice`; Decimals as their exact strings."""
    if price is None:
        return None
    return {
        "model": price.model,
        "input": str(price.input_per_mtok),
        "output": str(price.output_per_mtok),
        "window": price.context_window,
        "priced": price.priced,
        "source": price.source,
        "id": price.resolved_id,
        "input_tiers": _tiers_json(price.input_tiers),
        "output_tiers": _tiers_json(price.output_tiers),
        "cache_read": _rate_json(price.cache_read),
        "cache_write": _rate_json(price.cache_write),
        "cache_write_1h": _rate_json(price.cache_write_1h),
    }


def _price_from(raw: dict[str, Any] | None) -> ModelPrice | None:
    if raw is None:
        return None
    return ModelPrice(
        model=raw["model"],
        input_per_mtok=Decimal(raw["input"]),
        output_per_mtok=Decimal(raw["output"]),
        context_window=raw["window"],
        priced=bool(raw["priced"]),
        source=raw["source"],
        resolved_id=raw["id"],
        input_tiers=_tiers_from(raw["input_tiers"]),
        output_tiers=_tiers_from(raw["output_tiers"]),
        cache_read=_rate_from(raw["cache_read"]),
        cache_write=_rate_from(raw["cache_write"]),
        cache_write_1h=_rate_from(raw["cache_write_1h"]),
    )
