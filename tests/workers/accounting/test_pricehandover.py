"""genai-prices' answers handed from ``llmq worker`` to its worker: the same prices, without the library."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from workers.accounting.pricehandover import PRICES_ENV, HandedOver, handed_over, handover
from workers.accounting.prices import GenaiPrices, ModelPrice, PriceBook, PriceSource, price_sources
from workers.contract.catalog import PriceTable
from workers.routes import load_config
from workers.runtime.launch import default_prices


class Counting(GenaiPrices):
    """The library, counting what it is asked (a handed-over answer never reaches it)."""

    def __init__(self) -> None:
        self.asked: list[object] = []

    def lookup(self, source: PriceSource, name: str) -> ModelPrice | None:
        self.asked.append((source.provider_id, name))
        return super().lookup(source, name)

    def table(self, source: PriceSource) -> PriceTable:
        self.asked.append(source.provider_id)
        return super().table(source)


CONFIG = """
[routes]
smart = ["anthropic:claude-sonnet-4-5", "openai:gpt-4o", "gemini:gemini-2.5-pro"]

[models."anthropic:claude-sonnet-4-5"]
output_per_mtok = 12

[models."openai:gpt-4o"]
context_window = 64000
cache_read_per_mtok = 1

[models."openai:my-model"]
input_per_mtok = 1
output_per_mtok = 2.5

[providers.gemini]
type = "gemini"
base_url = "http://127.0.0.1:1/v1beta"
"""

MODELS = [
    "openai:gpt-4o-mini",
    "anthropic:claude-sonnet-4-5",  # tiered (above 200k tokens), and its output rate overridden
    "openai:gpt-4o",  # its window and cache read overridden
    "gemini:gemini-2.5-pro",  # tiered, priced by genai-prices' google provider
    "openai:my-model",  # the config's price alone
]


def test_the_handed_over_prices_are_genai_prices_with_the_configs_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``llmq worker`` hands over (``default_prices``, from the config and the default model)
    gives every model of the start and the routes exactly the price a book over the library gives,
    tiers, cache rates and the config's overrides included, and every provider's table of names,
    without asking the library once."""
    path = tmp_path / "llmq.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("LLMQ_CONFIG", str(path))
    monkeypatch.setenv("LLMQ_DEFAULT_MODEL", "openai:gpt-4o-mini")
    text = default_prices()
    assert 0 < len(text) <= 96 * 1024
    config = load_config(str(path))
    library = Counting()
    genai = handed_over({PRICES_ENV: text}, library=library)
    assert genai is not None
    handed = PriceBook(
        config.models, unpriced=config.budget.unpriced, sources=price_sources(config.providers), genai=genai
    )
    direct = PriceBook(config.models, unpriced=config.budget.unpriced, sources=price_sources(config.providers))
    for model in MODELS:
        assert handed.lookup(model) == direct.lookup(model), model
    for provider in ("openai", "anthropic", "ollama", "gemini"):
        assert handed.table(provider) == direct.table(provider), provider
    assert library.asked == []
    # what it came to: the override on top of genai-prices' tiers, as without a handover
    claude = handed.lookup("anthropic:claude-sonnet-4-5")
    assert (claude.source, claude.rates(200_000), claude.rates(200_001)) == (
        "config",
        (Decimal(3), Decimal(12)),
        (Decimal(6), Decimal(12)),
    )
    assert claude.cache_write == (Decimal("3.75"), ((200_000, Decimal("7.5")),))
    gemini = handed.lookup("gemini:gemini-2.5-pro")
    assert gemini.input_tiers == ((200_000, Decimal("2.5")),) and gemini.source == "genai-prices"
    gpt = handed.lookup("openai:gpt-4o")
    assert (gpt.context_window, gpt.cache_read) == (64_000, (Decimal(1), ()))
    # a model not handed over: the library is asked, once
    assert handed.lookup("openai:gpt-4.1") == direct.lookup("openai:gpt-4.1")
    assert library.asked == [("openai", "gpt-4.1")]


def test_every_price_of_two_providers_survives_the_handover_exactly() -> None:
    """Each field of every OpenAI and Anthropic price genai-prices has (Decimals, tiers, cache rates)."""
    direct = PriceBook()
    models = [f"{p}:{name}" for p in ("openai", "anthropic") for name in direct.table(p).names]
    assert len(models) > 100
    text = handover(None, unpriced="reject", sources={}, models=models, providers=[], max_bytes=1 << 20)
    library = Counting()
    handed = PriceBook(genai=handed_over({PRICES_ENV: text}, library=library))
    compared = 0
    for model in models:
        try:
            expected = direct.lookup(model)
        except Exception:
            continue
        assert handed.lookup(model) == expected, model
        compared += 1
    assert compared > 100
    assert all(isinstance(key, tuple) for key in library.asked)  # only unsteady prices were asked again
    assert len(library.asked) < 5


def test_a_price_that_depends_on_the_time_is_not_handed_over() -> None:
    """DeepSeek's off-peak hours: a price chosen by the time of day is asked when it is needed, as before."""
    sources = {"deepseek": PriceSource(provider_id="deepseek")}
    text = handover(
        None, unpriced="reject", sources=sources, models=["deepseek:deepseek-chat", "openai:gpt-4o"], providers=[]
    )
    keys = [(pid, name) for pid, _, name, _ in json.loads(text)["prices"]]
    assert keys == [("openai", "gpt-4o")]
    library = Counting()
    handed = PriceBook(sources=sources, genai=handed_over({PRICES_ENV: text}, library=library))
    assert handed.lookup("deepseek:deepseek-chat") == PriceBook(sources=sources).lookup("deepseek:deepseek-chat")
    assert library.asked == [("deepseek", "deepseek-chat")]


def test_the_handover_is_bounded_tables_first() -> None:
    whole = handover(
        None, unpriced="reject", sources={}, models=["openai:gpt-4o-mini"], providers=["openai", "anthropic"]
    )
    tables = [entry[0] for entry in json.loads(whole)["tables"]]
    assert tables == ["openai", "anthropic"]
    prices_only = len(handover(None, unpriced="reject", sources={}, models=["openai:gpt-4o-mini"], providers=[]))
    cut = handover(
        None, unpriced="reject", sources={}, models=["openai:gpt-4o-mini"], providers=["openai", "anthropic"],
        max_bytes=len(whole) - 1,
    )  # fmt: skip
    assert [entry[0] for entry in json.loads(cut)["tables"]] == ["openai"] and len(cut) < len(whole)
    assert (
        handover(
            None, unpriced="reject", sources={}, models=["openai:gpt-4o-mini"], providers=[], max_bytes=prices_only - 1
        )
        == ""
    )


def test_the_worker_takes_the_handover_out_of_its_environment() -> None:
    """A process the worker starts does not inherit it; nothing or garbage: the library answers all."""
    text = handover(None, unpriced="reject", sources={}, models=["openai:gpt-4o-mini"], providers=[])
    env = {PRICES_ENV: text, "OTHER": "1"}
    assert isinstance(handed_over(env), HandedOver)
    assert env == {"OTHER": "1"}
    assert handed_over(env) is None
    assert handed_over({PRICES_ENV: "{not json"}) is None
    assert handed_over({PRICES_ENV: '{"v": 99}'}) is None
