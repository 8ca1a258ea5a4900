"""``llmq spend`` and ``llmq budget set --tag/--user`` as subprocesses against the test Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from workers.accounting.ledger import Ledger
from workers.llm.errors import BudgetExceededError

REPO = Path(__file__).resolve().parents[2]


def llmq(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    environ.update(LLMQ_REDIS_URL=redis_url, **env)
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60
    )


def test_spend_by_each_dimension_as_json_and_as_a_table(redis_url: str, redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    for i, (tenant, tags, user, usd) in enumerate(
        [("acme", ["checkout"], "u-1", "1.25"), ("acme", ["search", "beta"], "u-2", "0.5"), ("zeta", [], None, "2")]
    ):
        model = "openai:gpt-4o" if i < 2 else "anthropic:claude-sonnet-4-5"
        ledger.settle(ledger.reserve(f"job-{i}", 1, tenant, 5, tags=tags, user=user, model=model), Decimal(usd))
    by_tag = llmq(redis_url, "spend", "--by", "tag", "--since", "7d", "--json")
    assert by_tag.returncode == 0, by_tag.stderr
    data = json.loads(by_tag.stdout)
    assert data["by"] == "tag" and data["total_usd"] == 3.75 and data["other_usd"] == 0
    assert [(r["value"], r["spent_usd"]) for r in data["rows"]] == [("checkout", 1.25), ("beta", 0.5), ("search", 0.5)]
    by_model = json.loads(llmq(redis_url, "spend", "--by", "model", "--json").stdout)  # this month
    assert {r["value"]: r["spent_usd"] for r in by_model["rows"]} == {
        "anthropic:claude-sonnet-4-5": 2.0,
        "openai:gpt-4o": 1.75,
    }
    top = json.loads(llmq(redis_url, "spend", "--by", "user", "--top", "1", "--json").stdout)
    assert [r["value"] for r in top["rows"]] == ["u-1"] and top["other_usd"] == 0.5
    table = llmq(redis_url, "spend")  # by tenant, this month
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("Spend by tenant, ") and lines[1].split() == ["TENANT", "SPENT", "SHARE"]
    assert lines[2].split() == ["zeta", "$2.00", "53.3%"] and lines[3].split() == ["acme", "$1.75", "46.7%"]
    assert lines[-1] == "total spend in the period: $3.75"


def test_budget_set_and_reset_for_a_tag_and_a_user(redis_url: str, redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.settle(ledger.reserve("job-1", 1, "acme", 1, tags=["checkout"], user="u 1"), Decimal("0.4"))
    assert llmq(redis_url, "budget", "set", "--monthly", "1", "--tag", "checkout").returncode == 0
    made = llmq(redis_url, "budget", "set", "--monthly", "0.5", "--user", "u 1")
    assert made.returncode == 0 and made.stdout.strip() == "monthly limit for user:u 1 set to $0.50"
    scopes = {s["scope"]: s for s in json.loads(llmq(redis_url, "budget", "show", "--json").stdout)["scopes"]}
    assert (scopes["tag:checkout"]["spent_usd"], scopes["tag:checkout"]["limit_usd"]) == (0.4, 1.0)
    assert (scopes["user:u 1"]["spent_usd"], scopes["user:u 1"]["state"]) == (0.4, "ok")
    with pytest.raises(BudgetExceededError, match="user:u 1"):
        ledger.reserve("job-2", 1, "acme", Decimal("0.2"), user="u 1")
    reset = llmq(redis_url, "budget", "reset", "--user", "u 1")
    assert reset.returncode == 0 and "user:u 1" in reset.stdout
    ledger.reserve("job-2", 1, "acme", Decimal("0.2"), user="u 1")  # fits again
    both = llmq(redis_url, "budget", "set", "--monthly", "1", "--tag", "a", "--user", "b")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert "is not a tag" in llmq(redis_url, "budget", "set", "--monthly", "1", "--tag", "a b").stderr


def test_spend_refuses_what_it_cannot_read(redis_url: str) -> None:
    assert "not a number of days" in llmq(redis_url, "spend", "--since", "7").stderr
    too_far = llmq(redis_url, "spend", "--since", "200d")
    assert too_far.returncode == 2 and "days must be 1-120" in too_far.stderr
    assert "invalid choice" in llmq(redis_url, "spend", "--by", "team").stderr
    both = llmq(redis_url, "spend", "--since", "2d", "--month", "2026-01")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
