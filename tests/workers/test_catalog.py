"""The one rule that turns a model name into ``provider:model`` ids, and its messages (no I/O)."""

from __future__ import annotations

import pytest

from workers.accounting.prices import PriceBook
from workers.contract.catalog import (
    DEFAULT_FAMILIES,
    ModelCatalog,
    ModelFamily,
    UnknownModelError,
    catalog_from_config,
)
from workers.routes import LLMQConfig

CONFIG = {
    "routes": {"cheap": ["openai:gpt-4o-mini"], "smart": ["anthropic:claude-sonnet-4-5", "openai:gpt-4o"]},
    "models": {"openai:gpt-4o": {"rpm": 500}, "ollama:*": {"input_per_mtok": 0, "output_per_mtok": 0}},
    "model_families": {"llama*": "ollama", "gpt-4o-eu*": "azure-eu"},
    "providers": {"azure-eu": {"type": "azure", "base_url": "https://x"}},
}


@pytest.fixture
def catalog() -> ModelCatalog:
    return catalog_from_config(CONFIG, default_model="openai:gpt-4o-mini")


@pytest.mark.parametrize(
    ("ref", "ids"),
    [
        ("openai:gpt-4o", ["openai:gpt-4o"]),
        ("cheap", ["openai:gpt-4o-mini"]),
        ("smart", ["anthropic:claude-sonnet-4-5", "openai:gpt-4o"]),
        ("default", ["openai:gpt-4o-mini"]),
        ("gpt-4o-mini", ["openai:gpt-4o-mini"]),
        ("GPT-4o", ["openai:GPT-4o"]),  # families match without case; the name is kept as typed
        ("chatgpt-4o-latest", ["openai:chatgpt-4o-latest"]),
        ("o3-mini", ["openai:o3-mini"]),
        ("o1", ["openai:o1"]),
        ("claude-sonnet-4-5", ["anthropic:claude-sonnet-4-5"]),
        ("llama3.1", ["ollama:llama3.1"]),  # the config's family
        ("gpt-4o-eu-2", ["azure-eu:gpt-4o-eu-2"]),  # the config's, before the built-in gpt-*
        ("azure-eu:gpt-4o", ["azure-eu:gpt-4o"]),  # a [providers.<name>] entry is a provider
        ("gpt-4o~429@2", ["openai:gpt-4o~429@2"]),
    ],
)
def test_names_resolve_by_one_rule(catalog: ModelCatalog, ref: str, ids: list[str]) -> None:
    assert catalog.resolve(ref) == ids


def test_a_route_named_default_wins_over_the_default_model() -> None:
    catalog = catalog_from_config({"routes": {"default": ["anthropic:claude-haiku-4-5"]}})
    assert catalog.resolve("default") == ["anthropic:claude-haiku-4-5"]


@pytest.mark.parametrize(
    ("ref", "code", "says"),
    [
        ("opneai:gpt-4o", "unknown_provider", ["unknown provider 'opneai'", "did you mean 'openai:gpt-4o'?"]),
        ("azure-us:gpt-4o", "unknown_provider", ["did you mean 'azure-eu:gpt-4o'?", "anthropic, azure-eu"]),
        ("cheep", "unknown_model", ["not a route alias (known: cheap, default, smart)", "did you mean 'cheap'?"]),
        ("mistral-large", "unknown_model", ["no model family matches it (llama* -> ollama", "claude-* -> anthropic"]),
        ("gtp-4o", "unknown_model", ["did you mean 'gpt-4o'?", "write it as provider:model"]),
    ],
)
def test_an_unknown_name_says_what_is_known_and_what_was_meant(
    catalog: ModelCatalog, ref: str, code: str, says: list[str]
) -> None:
    with pytest.raises(UnknownModelError) as raised:
        catalog.resolve(ref)
    assert raised.value.code == code
    assert all(part in str(raised.value) for part in says), str(raised.value)


def test_a_family_naming_a_provider_the_workers_lack_is_refused() -> None:
    catalog = ModelCatalog(families=[ModelFamily(pattern="gemini-*", provider="gemini"), *DEFAULT_FAMILIES])
    with pytest.raises(UnknownModelError, match="unknown provider 'gemini'"):
        catalog.resolve("gemini-2.5-pro")


def test_the_config_and_the_worker_read_the_same_tables(catalog: ModelCatalog) -> None:
    """The producer's fallback reads the TOML document; the worker its validated config: same catalog."""
    tables = {k: v for k, v in CONFIG.items() if k in LLMQConfig.model_fields}  # (providers: #28's table)
    worker_side = catalog_from_config(LLMQConfig.model_validate(tables).model_dump())
    assert worker_side.routes == catalog.routes
    assert worker_side.models == ["anthropic:claude-sonnet-4-5", "openai:gpt-4o", "openai:gpt-4o-mini"]
    assert [f.pattern for f in worker_side.families] == [f.pattern for f in catalog.families]


def test_listing_has_aliases_then_configured_models(catalog: ModelCatalog) -> None:
    assert catalog.listed_models() == [
        ("cheap", "llmqueue"),
        ("default", "llmqueue"),
        ("smart", "llmqueue"),
        ("anthropic:claude-sonnet-4-5", "anthropic"),
        ("openai:gpt-4o", "openai"),
        ("openai:gpt-4o-mini", "openai"),
    ]


def _priced(**update: object) -> ModelCatalog:
    book = PriceBook({})
    return ModelCatalog(priced={p: book.table(p) for p in ("openai", "anthropic", "ollama")}, **update)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model_id", "near"),
    [
        ("openai:gtp-4o-mini", "openai:gpt-4o-mini"),
        ("anthropic:claude-sonet-4-5", "anthropic:claude-sonnet-4-5"),
        # what the price table knows, dated and variant names included: never refused
        ("openai:gpt-4o-mini", None),
        ("openai:gpt-4o-2024-08-06", None),
        ("anthropic:claude-3-5-haiku", None),
        ("anthropic:claude-sonnet-4-5-20250929", None),
        ("openai:o1-preview", None),
        ("openai:gpt-4o~429@2", None),
        # unknown and near nothing: left to the worker (a config price may be on its way)
        ("openai:my-finetune", None),
        ("ollama:llama3.1", None),  # no price table for a local provider: nothing to judge by
    ],
)
def test_an_unpriced_near_miss_names_the_priced_model(model_id: str, near: str | None) -> None:
    assert _priced().unpriced_near_miss(model_id) == near


def test_unpriced_near_misses_are_only_judged_when_the_workers_refuse_unpriced_models() -> None:
    assert _priced(unpriced="allow_unpriced").unpriced_near_miss("openai:gtp-4o-mini") is None
    assert _priced(free=["openai"]).unpriced_near_miss("openai:gtp-4o-mini") is None
    assert ModelCatalog().unpriced_near_miss("openai:gtp-4o-mini") is None  # no price table: no judgement


def test_every_name_the_price_table_knows_passes() -> None:
    catalog = _priced()
    assert catalog.priced is not None
    for provider, table in catalog.priced.items():
        for name in table.names:
            assert catalog.unpriced_near_miss(f"{provider}:{name}") is None, name


def test_two_workers_catalogs_merge_into_what_either_accepts(catalog: ModelCatalog) -> None:
    other = catalog_from_config({"routes": {"fast": ["openai:gpt-4o-mini"]}, "budget": {"unpriced": "allow_unpriced"}})
    merged = catalog.merged(other)
    assert merged.resolve("fast") == ["openai:gpt-4o-mini"] and merged.resolve("cheap") == ["openai:gpt-4o-mini"]
    assert merged.resolve("llama3") == ["ollama:llama3"] and merged.unpriced == "allow_unpriced"
    assert catalog.digest() != other.digest() and catalog.digest() == catalog_from_config(CONFIG).digest()


@pytest.mark.parametrize(
    ("tables", "says"),
    [
        (
            {"routes": {"smart": ["openai:gpt-4o", "opneai:gpt-4o-mini"]}},
            "routes.smart: unknown provider 'opneai' in 'opneai:gpt-4o-mini'",
        ),
        ({"models": {"anthropc:claude-haiku-4-5": {"rpm": 5}}}, 'models."anthropc:claude-haiku-4-5": unknown provider'),
    ],
)
def test_a_provider_typo_in_the_config_is_refused_when_it_loads(tmp_path, tables: dict, says: str) -> None:
    import json

    from workers.llm.errors import ConfigurationError
    from workers.routes import load_config

    path = tmp_path / "llmq.toml"
    lines = [
        f"[{table}]\n" + "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in body.items())
        for table, body in tables.items()
    ]
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigurationError) as refused:
        load_config(path)
    assert says in str(refused.value) and "did you mean" in str(refused.value), str(refused.value)
    assert str(refused.value).count("unknown provider") == 1


def _toml(value: object) -> str:
    import json

    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def test_a_typo_inside_a_route_or_the_default_model_stops_the_worker_naming_where_it_is(tmp_path) -> None:
    """A route member or ``LLMQ_DEFAULT_MODEL`` every job reaching would fail: the worker does not start."""
    from workers.jobs.catalog import worker_catalog
    from workers.llm.errors import ConfigurationError
    from workers.llm.httpclient import HTTPClient
    from workers.llm.registry import build_registry

    http = HTTPClient()
    registry = build_registry(http, env={})
    book = PriceBook({})
    cases = [
        (
            LLMQConfig.model_validate({"routes": {"cheap": ["openai:gtp-4o-mini", "openai:gpt-4o"]}}),
            "openai:gpt-4o-mini",
            "routes.cheap: no price known for openai:gtp-4o-mini; did you mean 'openai:gpt-4o-mini'?",
        ),
        (LLMQConfig(), "openai:gpt-4o-mni", "LLMQ_DEFAULT_MODEL: no price known for openai:gpt-4o-mni; did you mean"),
        (LLMQConfig(), "opneai:gpt-4o", "LLMQ_DEFAULT_MODEL: unknown provider 'opneai'"),
        (LLMQConfig(), "gpt-4o", "LLMQ_DEFAULT_MODEL: 'gpt-4o' is not a provider:model id; write it 'openai:gpt-4o'"),
    ]
    try:
        for config, default_model, says in cases:
            with pytest.raises(ConfigurationError) as refused:
                worker_catalog(config, registry, book, default_model)
            assert str(refused.value).startswith(says), str(refused.value)
        ok = LLMQConfig.model_validate({"routes": {"cheap": ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]}})
        assert worker_catalog(ok, registry, book, "openai:gpt-4o-mini").resolve("cheap")[0] == "openai:gpt-4o-mini"
    finally:
        registry.close()
        http.close()


def test_a_producer_names_the_route_a_typo_is_in() -> None:
    from producers.catalog import catalog_problems
    from workers.contract import CompletionJob

    catalog = _priced(routes={"cheap": ["openai:gtp-4o-mini"], "smart": ["opneai:gpt-4o"]})
    job = CompletionJob(model="cheap", messages=[{"role": "user", "content": "hi"}])
    [problem] = catalog_problems(job, catalog)
    assert problem["msg"].startswith("route 'cheap' (the workers' config) names openai:gtp-4o-mini: no price known")
    [problem] = catalog_problems(job.model_copy(update={"model": "smart"}), catalog)
    assert problem["msg"].startswith("route 'smart': unknown provider 'opneai'"), problem["msg"]
    assert "did you mean 'openai:gpt-4o'?" in problem["msg"]
