"""``llmq budget`` as a subprocess against the test Redis (``LLMQ_REDIS_URL``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from llmq.localredis import free_port
from workers.accounting.ledger import Ledger
from workers.llm.errors import BudgetExceededError

REPO = Path(__file__).resolve().parents[2]


def llmq(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    environ.update(LLMQ_REDIS_URL=redis_url, **env)
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "budget", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def show(redis_url: str, **env: str) -> dict:
    proc = llmq(redis_url, "show", "--json", **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_show_reports_spend_reserved_and_limit_per_scope(redis_url: str, redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.settle(ledger.reserve("job-1", 1, "acme", 1), 0.125)
    ledger.reserve("job-2", 1, "acme", 0.5)
    data = show(redis_url, LLMQ_MONTHLY_BUDGET_USD="10")
    assert data["month"] == ledger.month() and data["kill_ratio"] == 0.9
    scopes = {s["scope"]: s for s in data["scopes"]}
    assert scopes["global"] == {
        "scope": "global",
        "spent_usd": 0.125,
        "reserved_usd": 0.5,
        "limit_usd": 10.0,
        "kill_switch_usd": 9.0,
        "remaining_usd": 9.375,
        "state": "ok",
    }
    assert scopes["tenant:acme"]["limit_usd"] is None and scopes["tenant:acme"]["state"] == "unlimited"
    table = llmq(redis_url, "show", LLMQ_MONTHLY_BUDGET_USD="10")
    assert table.returncode == 0, table.stderr
    assert "kill switch at 90%" in table.stdout
    global_row = next(line for line in table.stdout.splitlines() if line.startswith("global"))
    assert global_row.split() == ["global", "$0.125", "$0.50", "$10.00", "$9.00", "$9.375", "ok"]


def test_set_and_remove_limits(redis_url: str, redis_client: redis.Redis) -> None:
    proc = llmq(redis_url, "set", "--monthly", "250")
    assert proc.returncode == 0 and "global set to $250.00" in proc.stdout
    assert llmq(redis_url, "set", "--monthly", "5.5", "--tenant", "acme").returncode == 0
    scopes = {s["scope"]: s["limit_usd"] for s in show(redis_url, LLMQ_MONTHLY_BUDGET_USD="10")["scopes"]}
    assert scopes == {"global": 250.0, "tenant:acme": 5.5}  # stored limits win over the env default
    assert llmq(redis_url, "set", "--monthly", "none").returncode == 0
    assert show(redis_url, LLMQ_MONTHLY_BUDGET_USD="10")["scopes"][0]["limit_usd"] == 10.0
    assert show(redis_url)["scopes"][0]["limit_usd"] is None
    with pytest.raises(BudgetExceededError, match="tenant:acme"):  # workers see the stored limit
        Ledger(redis_client).reserve("job-1", 1, "acme", 6)


def test_reset_clears_the_month(redis_url: str, redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.settle(ledger.reserve("job-1", 1, "a", 1), 1)
    ledger.settle(ledger.reserve("job-2", 1, "b", 1), 2)
    proc = llmq(redis_url, "reset", "--tenant", "a")
    assert proc.returncode == 0 and "tenant:a" in proc.stdout
    spent = {s["scope"]: s["spent_usd"] for s in show(redis_url)["scopes"]}
    assert spent == {"global": 3.0, "tenant:b": 2.0}
    assert llmq(redis_url, "reset").returncode == 0
    assert [s["spent_usd"] for s in show(redis_url)["scopes"]] == [0.0]


def test_bad_arguments_and_unreachable_redis_are_clear(redis_url: str) -> None:
    bad = llmq(redis_url, "set", "--monthly", "-3")
    assert bad.returncode == 2 and "finite amount >= 0" in bad.stderr
    assert "not a tenant name" in llmq(redis_url, "set", "--monthly", "1", "--tenant", "a b").stderr
    assert "not a month" in llmq(redis_url, "show", "--month", "2026-13").stderr
    down = llmq(f"redis://127.0.0.1:{free_port()}/0", "show")
    # the one first-error line every command gives: the URL, and what to do (exit 2)
    assert down.returncode == 2 and "cannot reach Redis at" in down.stderr and "LLMQ_REDIS_URL" in down.stderr
    assert "Traceback" not in down.stderr and len(down.stderr.strip().splitlines()) == 1


def test_the_command_module_imports_no_worker_code() -> None:
    code = "import sys, llmq.commands.budget; print(*sorted(m for m in sys.modules if m.startswith('workers')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    shared = (["workers", "contract"], ["workers", "connections"])  # what the producer side may import
    assert {m for m in proc.stdout.split() if m != "workers" and m.split(".")[:2] not in shared} == set()
