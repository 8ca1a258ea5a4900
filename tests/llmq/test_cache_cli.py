"""``llmq cache stats | purge`` as subprocesses against the test Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from workers.contract import CacheSpec, CompletionJob, CompletionResult, Message
from workers.jobs.cachekey import cache_key
from workers.jobs.responsecache import ResponseCache

REPO = Path(__file__).resolve().parents[2]


def llmq(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    environ["LLMQ_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "cache", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stats_and_purge(redis_url: str, redis_client: redis.Redis) -> None:
    cache = ResponseCache(redis_client)
    for tenant, scope in (("a", "tenant"), ("b", "tenant"), ("a", "global")):
        job = CompletionJob.model_validate(
            {"model": "openai:m", "messages": [{"role": "user", "content": tenant}], "tenant": tenant}
        )
        spec = CacheSpec(scope=scope)  # type: ignore[arg-type]
        key = cache_key(job, spec, ["openai:m"], [Message(role="user", content=tenant)])
        assert cache.put(key, CompletionResult(id=f"j-{tenant}", status="succeeded", content="x"))
    stats = llmq(redis_url, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["entries"] == 3 and data["bytes"] > 0
    purged = llmq(redis_url, "purge", "--tenant", "a")
    assert purged.returncode == 0 and purged.stdout.strip() == "purged 1 response cache entries of tenant a"
    assert "2 entries" in llmq(redis_url, "stats").stdout  # b's and the global one stay
    assert llmq(redis_url, "purge").stdout.strip() == "purged 2 response cache entries"
    assert json.loads(llmq(redis_url, "stats", "--json").stdout) == {"entries": 0, "bytes": 0}
    assert "not a tenant name" in llmq(redis_url, "purge", "--tenant", "a b").stderr
