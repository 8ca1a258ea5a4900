"""Config files: the examples shown in the docs load, and per-model settings reach what uses them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

import workers.routes
from workers.routes import LLMQConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_routes_file_example_loads() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        LLMQConfig.model_validate(tomllib.loads(block))


def test_the_config_module_example_loads() -> None:
    doc = workers.routes.__doc__ or ""
    example = doc.split("Example::", 1)[1].split("Every table forbids", 1)[0]
    LLMQConfig.model_validate(tomllib.loads("\n".join(line[4:] for line in example.splitlines())))


def test_per_model_guard_settings_reach_the_breaker_and_the_buckets() -> None:
    from workers.guards.policy import breaker_policy_for, rate_limits_for
    from workers.routes import ModelConfig

    default = breaker_policy_for(ModelConfig())
    assert (default.failures, default.window_s, default.failure_ratio, default.cooldown_s) == (5, 60.0, 0.8, 30.0)
    tuned = ModelConfig(breaker_failures=3, breaker_window_s=10, breaker_failure_ratio=0.5, breaker_cooldown_s=5)
    policy = breaker_policy_for(tuned)
    assert (policy.failures, policy.window_s, policy.failure_ratio, policy.cooldown_s) == (3, 10, 0.5, 5)
    assert breaker_policy_for(ModelConfig(breaker_failure_ratio=0)).failure_ratio is None  # the count alone
    limits = rate_limits_for(ModelConfig(rpm=6000, rpm_burst=20, tpm=10_000, tpm_burst=5000, rate_lease_ms=0))
    assert (limits.rpm, limits.rpm_burst, limits.tpm, limits.tpm_burst, limits.leased) == (
        6000,
        20,
        10_000,
        5000,
        False,
    )
    assert rate_limits_for(ModelConfig(rpm=6000)).lease_s == 0.1


def test_limits_no_bucket_can_meet_stop_the_guards_naming_the_model() -> None:
    from workers.guards.policy import check_limits, rate_limits_for
    from workers.guards.shared import SharedGuards
    from workers.llm.errors import ConfigurationError
    from workers.routes import ModelConfig

    # the routes file parses (its keys and types are right) ...
    config = LLMQConfig.model_validate({"models": {"openai:gpt-4o": {"rpm": 10, "rpm_burst": 11}}})
    # ... but no bucket can admit a burst above the limit: the guards refuse to start
    with pytest.raises(ConfigurationError, match=r'\[models\."openai:gpt-4o"\]: rpm_burst must be <= rpm'):
        check_limits(config)
    client = redis.Redis.from_url("redis://127.0.0.1:1")  # never contacted: the check comes first
    with pytest.raises(ConfigurationError, match="openai:gpt-4o"):
        SharedGuards(client, config)
    with pytest.raises(ConfigurationError, match="no refill"):
        rate_limits_for(ModelConfig(rpm=1200, rpm_burst=1200, rate_lease_ms=100))
    check_limits(LLMQConfig.model_validate({"models": {"openai:gpt-4o": {"rpm": 10, "rpm_burst": 10}}}))


def test_a_cached_route_must_be_a_route_alias() -> None:
    """``[cache.routes]`` is matched against the alias a job names: a typo would cache nothing."""
    routes = {"cheap": ["openai:gpt-4o-mini"]}
    assert LLMQConfig.model_validate({"routes": routes, "cache": {"routes": {"cheap": {}, "default": {}}}})
    with pytest.raises(ValidationError, match="did you mean 'cheap'"):
        LLMQConfig.model_validate({"routes": routes, "cache": {"routes": {"chaep": {"ttl_s": 60}}}})
    with pytest.raises(ValidationError, match="not a route alias"):
        LLMQConfig.model_validate({"cache": {"routes": {"openai:gpt-4o-mini": {}}}})


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ("[tenants.acme]\nweight = true", "tenants.acme.weight"),
        ('[tenants.acme]\nweight = "3"', "tenants.acme.weight"),
        ("[tenants.acme]\nmax_queued = true", "tenants.acme.max_queued"),
        ('[tenants.acme]\nmax_concurrency = "5"', "tenants.acme.max_concurrency"),
        ("[tenants.acme]\nkey_concurrency = 2.5", "tenants.acme.key_concurrency"),
        ('[scheduling]\nweights = { interactive = "8" }', "scheduling.weights.interactive"),
        ("[scheduling]\nkey_concurrency = true", "scheduling.key_concurrency"),
        ('[scheduling.keys]\n"doc:*" = false', "scheduling.keys.doc:*"),
        ('[scheduling]\nqueue_full_retry_after_s = "2"', "scheduling.queue_full_retry_after_s"),
        ('[tenants."acme\\n"]\nweight = 2', "tenants"),
        ('[scheduling.keys]\n"doc\\n" = 2', "scheduling.keys"),
    ],
)
def test_scheduling_numbers_must_be_numbers_and_names_have_no_newline(tmp_path: Path, table: str, field: str) -> None:
    """A weight or cap written as a string or a boolean is a config error naming it (``true`` was taken
    as 1 and ``"3"`` as 3), and a tenant name or key with a trailing newline is refused like any other
    character outside the name's set."""
    from workers.llm.errors import ConfigurationError
    from workers.routes import load_config

    path = tmp_path / "llmq.toml"
    path.write_text(table + "\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    assert f"{field}:" in str(caught.value), str(caught.value)


def test_scheduling_numbers_as_toml_numbers_load(tmp_path: Path) -> None:
    from workers.routes import load_config

    path = tmp_path / "llmq.toml"
    path.write_text(
        "[scheduling]\nweights = { interactive = 8, bulk = 0.5 }\nkey_concurrency = 2\nqueue_full_retry_after_s = 1\n"
        '[scheduling.keys]\n"doc:*" = 3\n[tenants.acme]\nweight = 2.5\nmax_concurrency = 5\nmax_queued = 100\n'
    )
    config = load_config(path)
    assert config.scheduling.weights == {"interactive": 8.0, "bulk": 0.5}
    assert config.tenants["acme"].max_queued == 100 and config.tenants["acme"].weight == 2.5
