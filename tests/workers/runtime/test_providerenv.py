"""A worker names, once at start, each built-in provider it has neither a key nor a base URL for."""

from __future__ import annotations

import logging

import pytest

from workers.runtime.providerenv import provider_environment
from workers.runtime.resources import WorkerResources
from workers.settings import Settings


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmq.worker" and r.levelno == logging.WARNING]


def test_each_provider_without_key_or_base_url_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="llmq.worker"):
        env = provider_environment({"OPENAI_API_KEY": "sk-not-real", "OLLAMA_HOST": "http://gpu-box:11434"})
    assert env["OPENAI_API_KEY"] == "sk-not-real" and "OPENAI_BASE_URL" not in env  # the real API, untouched
    [line] = _warnings(caplog)
    assert line.startswith("anthropic: neither ANTHROPIC_API_KEY nor ANTHROPIC_BASE_URL is set")
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:8790" in line and "LLMQ_SIMULATOR_URL" in line
    assert "sk-not-real" not in caplog.text


def test_the_simulator_url_serves_what_has_neither(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="llmq.worker"):
        env = provider_environment({"LLMQ_SIMULATOR_URL": "http://sim:8790/", "ANTHROPIC_API_KEY": "k"})
    assert env["OPENAI_BASE_URL"] == "http://sim:8790/v1" and env["OLLAMA_HOST"] == "http://sim:8790"
    assert "ANTHROPIC_BASE_URL" not in env  # a key of its own: its real API
    assert _warnings(caplog) == []


def test_a_worker_start_says_it_once_per_provider(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=2)
    with caplog.at_level(logging.INFO, logger="llmq.worker"):
        resources = WorkerResources.build(settings, watch_cancels=False, provider_env={"OPENAI_API_KEY": "sk-x"})
    try:
        lines = _warnings(caplog)
        named = sorted(line.split(":")[0] for line in lines if line.split(":")[0] in ("openai", "anthropic", "ollama"))
        assert named == ["anthropic", "ollama"]
    finally:
        resources.close()
