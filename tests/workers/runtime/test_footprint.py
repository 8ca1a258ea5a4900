"""What a worker process holds in memory: the encodings its models need, not Celery's whole command line."""

from __future__ import annotations

import subprocess
import sys

from workers.runtime.resources import WorkerResources
from workers.settings import Settings


def test_a_worker_preloads_only_its_default_models_encoding(redis_url: str) -> None:
    """``openai:gpt-4o-mini`` (the default model) counts with o200k_base; cl100k_base (Anthropic's and
    the others' estimates, ~24 MB) loads on the first job that needs it, not at start."""
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=2, default_model="openai:gpt-4o-mini")
    resources = WorkerResources.build(settings, watch_cancels=False, provider_env={"OPENAI_API_KEY": "sk-x"})
    try:
        assert resources.counter.loaded == ("o200k_base",)
        assert resources.counter.compact
    finally:
        resources.close()


def test_the_worker_command_imports_celerys_worker_command_alone() -> None:
    """``llmq worker`` runs Celery's ``worker`` command without Celery's other commands and plugins
    (Flower and Tornado, prompt_toolkit by ``celery amqp``: ~12 MB of every worker process)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "workers.runtime.launch", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage: llmq worker [OPTIONS]" in proc.stdout and "--concurrency" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "celery.bin.worker" in imported and "workers.runtime.app" in imported
    assert not {m for m in imported if m.split(".")[0] in ("flower", "tornado", "prompt_toolkit", "click_repl")}
    assert "celery.bin.celery" not in imported
