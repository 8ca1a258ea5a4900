"""PriceBook: genai-prices offline, config overrides, local models free, unpriced policy."""

from __future__ import annotations

import socket
import threading
from decimal import Decimal

import pytest

from workers.accounting.prices import ModelPrice, PriceBook
from workers.contract import Usage
from workers.llm.errors import ConfigurationError, is_retryable


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every lookup must work from the bundled data: any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    ("model", "resolved", "rate_in", "rate_out", "window"),
    [
        ("openai:gpt-4o", "gpt-4o", "2.5", "10", 128_000),
        ("openai:gpt-4o-mini", "gpt-4o-mini", "0.15", "0.6", 128_000),
        ("anthropic:claude-sonnet-4-5", "claude-sonnet-4-5", "3", "15", 200_000),
        ("anthropic:claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "3", "15", 200_000),
        ("anthropic:claude-haiku-4-5", "claude-haiku-4-5", "1", "5", 200_000),
    ],
)
def test_known_models_resolve_from_genai_prices(
    model: str, resolved: str, rate_in: str, rate_out: str, window: int
) -> None:
    price = PriceBook().lookup(model)
    assert (price.model, price.resolved_id, price.source, price.priced) == (model, resolved, "genai-prices", True)
    assert price.rates(1000) == (Decimal(rate_in), Decimal(rate_out))
    assert price.context_window == window


def test_costs_are_exact_decimals() -> None:
    price = PriceBook().lookup("openai:gpt-4o")
    assert price.worst_case_cost(1000, 500) == Decimal("0.0075")  # 1000 × 2.5 + 500 × 10 per MTok
    assert price.cost(Usage(prompt_tokens=1000, completion_tokens=100)) == Decimal("0.0035")
    assert price.cost(Usage()) == 0


def test_prompt_cache_reads_and_writes_are_billed_at_their_own_rates() -> None:
    gpt = PriceBook().lookup("openai:gpt-4o")  # input 2.5, cache read 1.25, output 10 per MTok
    full = gpt.cost(Usage(prompt_tokens=1000, completion_tokens=100))
    cached = gpt.cost(Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=800))
    assert cached == (200 * Decimal("2.5") + 800 * Decimal("1.25") + 100 * Decimal(10)) / 1_000_000
    assert cached < full == gpt.worst_case_cost(1000, 100)  # the worst case assumes no cache
    claude = PriceBook().lookup("anthropic:claude-sonnet-4-5")  # 3 in, 0.3 read, 3.75 write, 15 out
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=500, cache_write_tokens=400)
    want = 100 * Decimal(3) + 500 * Decimal("0.3") + 400 * Decimal("3.75") + 10 * Decimal(15)
    assert claude.cost(usage) == want / 1_000_000
    # the config can price the cache; without a cache rate, cached tokens cost the input rate
    book = PriceBook(
        {
            "openai:gpt-4o": {"cache_read_per_mtok": 0.5},
            "openai:house": {"input_per_mtok": 1, "output_per_mtok": 2},
        }
    )
    assert book.lookup("openai:gpt-4o").cost(Usage(prompt_tokens=1000, cached_tokens=1000)) == Decimal("0.0005")
    assert book.lookup("openai:house").cost(Usage(prompt_tokens=1000, cached_tokens=1000)) == Decimal("0.001")


def test_tiered_prices_apply_above_the_threshold() -> None:
    price = PriceBook().lookup("anthropic:claude-sonnet-4-5")
    assert price.rates(200_000) == (Decimal(3), Decimal(15))
    assert price.rates(200_001) == (Decimal(6), Decimal("22.5"))
    assert price.worst_case_cost(200_001, 1000) == (200_001 * Decimal(6) + 1000 * Decimal("22.5")) / 1_000_000


def test_local_models_cost_zero() -> None:
    price = PriceBook().lookup("ollama:llama3.1")
    assert (price.priced, price.source, price.context_window) == (True, "local", None)
    assert price.worst_case_cost(10_000, 10_000) == 0


def test_config_overrides_win() -> None:
    book = PriceBook(
        {
            "openai:my-model": {"input_per_mtok": 1, "output_per_mtok": 2.5, "context_window": 8000},
            "openai:gpt-4o": {"context_window": 64_000},
            "anthropic:claude-sonnet-4-5": {"output_per_mtok": 12},
            "ollama:*": {"context_window": 8192},
            "ollama:priced": {"input_per_mtok": 0.01, "output_per_mtok": 0.02},
            "openai:gpt-4o-mini": {"max_retries": 3},  # other config keys are not prices
        }
    )
    mine = book.lookup("openai:my-model")
    assert (mine.source, mine.rates(1), mine.context_window) == ("config", (Decimal(1), Decimal("2.5")), 8000)
    window_only = book.lookup("openai:gpt-4o")
    assert (window_only.source, window_only.context_window, window_only.rates(1)) == (
        "genai-prices",
        64_000,
        (Decimal("2.5"), Decimal(10)),
    )
    half = book.lookup("anthropic:claude-sonnet-4-5")
    assert half.source == "config" and half.rates(300_000) == (Decimal(6), Decimal(12))  # input tiers kept
    assert book.context_window("ollama:llama3.1") == 8192
    assert book.lookup("ollama:priced").worst_case_cost(1_000_000, 0) == Decimal("0.01")
    assert book.lookup("openai:gpt-4o-mini").source == "genai-prices"


def test_config_objects_with_attributes_are_accepted() -> None:
    class Table:
        input_per_mtok = 3.0
        output_per_mtok = 4.0
        context_window = None
        rpm = 100

    assert PriceBook({"openai:x": Table()}).lookup("openai:x").rates(1) == (Decimal(3), Decimal(4))


def test_an_unknown_model_is_rejected_by_default() -> None:
    book = PriceBook()
    for _ in range(2):  # cached, and a fresh error each time
        with pytest.raises(ConfigurationError) as info:
            book.lookup("openai:no-such-model")
        err = info.value
        assert err.code == "unpriced_model" and not is_retryable(err)
        assert 'models."openai:no-such-model"' in err.message and "allow_unpriced" in err.message


def test_allow_unpriced_is_explicit_never_a_silent_zero() -> None:
    book = PriceBook({"mistral:*": {"context_window": 32_000}}, unpriced="allow_unpriced")
    price = book.lookup("acme:secret-model")
    assert (price.priced, price.source) == (False, "unpriced")
    assert price.worst_case_cost(1000, 1000) is None and price.cost(Usage(prompt_tokens=5)) is None
    assert book.lookup("mistral:not-a-real-model").context_window == 32_000


def test_half_an_override_for_an_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigurationError, match="needs both"):
        PriceBook({"openai:x": {"input_per_mtok": 1}}).lookup("openai:x")
    with pytest.raises(ConfigurationError, match="invalid price override"):
        PriceBook({"openai:x": {"input_per_mtok": -1}})
    with pytest.raises(ConfigurationError):
        PriceBook(unpriced="free")  # type: ignore[arg-type]


def test_the_updater_never_starts() -> None:
    from genai_prices import data_snapshot

    before = {t.name for t in threading.enumerate()}
    PriceBook().lookup("openai:gpt-4o")
    assert data_snapshot._custom_snapshot is None  # only UpdatePrices installs one
    assert {t.name for t in threading.enumerate()} <= before


def test_model_price_is_a_plain_value() -> None:
    price = ModelPrice("openai:x", Decimal(1), Decimal(2), 1000, True, "config")
    assert price.token_cost(1_000_000, 1_000_000) == Decimal(3)
    with pytest.raises(AttributeError):
        price.priced = False  # type: ignore[misc]
