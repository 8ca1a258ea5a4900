"""``llmq limits``: breaker, 429 hold and bucket levels per model, read from the shared state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis

from workers.guards.breaker import BreakerPolicy, CircuitBreaker
from workers.guards.policy import describe
from workers.guards.ratelimit import RateLimiter, RateLimits
from workers.llm.errors import ServerError

CONFIG = """
[routes]
default = ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"]

[models."openai:gpt-4o"]
rpm = 6
tpm = 60000
rate_lease_ms = 0
"""


def _limits(redis_url: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"LLMQ_REDIS_URL": redis_url, "LLMQ_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "limits", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_limits_shows_what_every_worker_sees(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    config = tmp_path / "llmq.toml"
    config.write_text(CONFIG)
    limiter, breaker = RateLimiter(redis_client), CircuitBreaker(redis_client)
    for _ in range(3):  # one request per 10 s, burst 1: slots reserved for the next 30 s, none left
        limiter.acquire("openai:gpt-4o", RateLimits(rpm=6, tpm=60000), 1000, max_wait_s=60)
    failure = ServerError("upstream 503", provider="anthropic", model="claude-sonnet-4-5", status=503)
    for _ in range(5):
        breaker.record("anthropic:claude-sonnet-4-5", BreakerPolicy(), failed=True, why=describe(failure))
    limiter.hold_off("openai:gpt-4o-mini", 30)  # a model outside the config, known from Redis

    out = _limits(redis_url, config, "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["model"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"openai:gpt-4o", "anthropic:claude-sonnet-4-5", "openai:gpt-4o-mini"}
    gpt = rows["openai:gpt-4o"]
    assert (gpt["breaker"], gpt["rpm"], gpt["rpm_available"], gpt["tpm"]) == ("closed", 6, 0, 60000)
    assert 0 < gpt["tpm_available"] < 60000
    claude = rows["anthropic:claude-sonnet-4-5"]
    assert claude["breaker"] == "open" and claude["opened_by"] == "server_error" and claude["breaker_retry_in_s"] > 0
    assert 0 < rows["openai:gpt-4o-mini"]["not_before_s"] <= 30  # the 30 s hold, however long the CLI took

    table = _limits(redis_url, config)
    assert table.returncode == 0 and "open" in table.stdout and "(server_error)" in table.stdout
    assert _limits(redis_url, config, "nonsense").returncode == 2


def test_limits_reads_model_names_as_jobs_do(redis_url: str, tmp_path: Path) -> None:
    config = tmp_path / "llmq.toml"
    config.write_text(CONFIG)
    rows = json.loads(_limits(redis_url, config, "--json", "default", "gpt-4o-mini").stdout)
    assert [r["model"] for r in rows] == ["openai:gpt-4o", "anthropic:claude-sonnet-4-5", "openai:gpt-4o-mini"]

    typo = _limits(redis_url, config, "gtp-4o")
    assert typo.returncode == 2
    assert "is a route alias" not in typo.stderr
    assert "unknown model 'gtp-4o'" in typo.stderr and "did you mean 'gpt-4o'?" in typo.stderr, typo.stderr


def test_limits_reads_a_typo_as_a_job_would_and_names_the_model_meant(redis_url: str, tmp_path: Path) -> None:
    """No worker runs: the config file and this machine's price table judge the names (as jobs are)."""
    config = tmp_path / "llmq.toml"
    config.write_text(CONFIG)
    for typo, meant in [
        ("gtp-4o", "'gpt-4o'"),
        ("openai:gtp-4o", "'openai:gpt-4o'"),
        ("opneai:gpt-4o", "'openai:gpt-4o'"),
    ]:
        out = _limits(redis_url, config, typo)
        assert out.returncode == 2 and out.stdout == "", out
        assert out.stderr.count(f"did you mean {meant}?") == 1 and "is a route alias" not in out.stderr, out.stderr
    assert _limits(redis_url, config, "gpt-4o").returncode == 0  # a bare name of a family
