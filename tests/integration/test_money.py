"""Tokens and money through the real queue: budget under concurrency, window gate, estimates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from producers import Client
from simulator.app import SimulatorThread
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger, to_micros
from workers.accounting.prices import PriceBook
from workers.contract import CompletionResult, JobKeys, Usage
from workers.settings import Settings

MODEL = "openai:gpt-4o-mini"
PROMPT = [{"role": "user", "content": "how much does this cost"}]


def _global(redis_url: str, monthly: float | None = None) -> tuple[float, float, float | None]:
    ledger = Ledger(redis.Redis.from_url(redis_url), monthly_limit_usd=monthly)
    status = next(s for s in ledger.show().scopes if s.scope == GLOBAL_SCOPE)
    ledger.client.close()
    return status.spent_usd, status.reserved_usd, status.limit_usd


def _job_cost() -> Decimal:
    """What one job costs: the simulator answers 20 tokens; max_tokens = 20 makes worst case = actual."""
    from workers.accounting.tokens import TokenCounter
    from workers.contract import Message

    prompt = TokenCounter().count(MODEL, [Message(**PROMPT[0])]).tokens
    cost = PriceBook().lookup(MODEL).cost(Usage(prompt_tokens=prompt, completion_tokens=20))
    assert cost is not None
    return cost


class TestBudgetUnderConcurrency:
    BUDGET_JOBS = 50

    @pytest.fixture
    def worker_settings(self, redis_url: str) -> Settings:
        budget = float(_job_cost() * self.BUDGET_JOBS)
        return Settings(
            redis_url=redis_url, pool="threads", concurrency=32, claim_lease_s=10, monthly_budget_usd=budget
        )

    def test_spend_never_passes_the_budget(
        self, worker, client: Client, simulator: SimulatorThread, redis_url: str, worker_settings: Settings
    ) -> None:
        reply = "llmq:reply:budget-test"
        for i in range(200):
            client.submit(
                {"model": MODEL, "messages": PROMPT, "max_tokens": 20, "stream": i % 2 == 0, "reply_to": reply}
            )
        listener = redis.Redis.from_url(redis_url)
        results = []
        for _ in range(200):
            item = listener.blpop([reply], timeout=60)
            assert item is not None, f"only {len(results)} of 200 jobs ended"
            results.append(item[1])
        listener.close()
        succeeded = sum(1 for r in results if b'"status":"succeeded"' in r)
        refused = sum(1 for r in results if b'"type":"budget_exceeded"' in r)
        assert succeeded + refused == 200
        spent, reserved, limit = _global(redis_url, worker_settings.monthly_budget_usd)
        assert limit == pytest.approx(worker_settings.monthly_budget_usd)
        assert spent <= limit and reserved == 0
        # the kill switch stops new jobs at 90 %; up to the in-flight reservations may land past it
        assert 0.85 * self.BUDGET_JOBS <= succeeded <= self.BUDGET_JOBS
        # every admitted job made exactly one upstream request; refused jobs made none
        assert simulator.simulator.stats.requests == succeeded
        # each settle is rounded up to a whole micro-dollar (never under-charged)
        assert spent == pytest.approx(to_micros(_job_cost()) * succeeded / 1e6, rel=1e-6)


@pytest.mark.parametrize("kind", ["tag", "user"])
def test_a_tag_or_user_budget_never_overshoots_and_spend_adds_up(
    kind: str, worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    """200 jobs at once against a tag's (or an end user's) budget that fits 50: the same reservation
    as the global budget's holds it; ``llmq spend`` then equals the sum of the results' costs."""
    jobs, fits = 200, 50
    admin = Ledger(redis.Redis.from_url(redis_url))
    admin.set_limit(_job_cost() * fits, **{kind: "capped"})
    reply = f"llmq:reply:{kind}-budget"
    for i in range(jobs):
        who = {"tags": ["capped", f"t{i % 3}"]} if kind == "tag" else {"user": "capped", "tags": [f"t{i % 3}"]}
        job = {"model": MODEL, "messages": PROMPT, "max_tokens": 20, "stream": i % 2 == 0, "reply_to": reply}
        client.submit({**job, **who, "tenant": f"team{i % 2}"})
    listener = redis.Redis.from_url(redis_url)
    results = []
    for _ in range(jobs):
        item = listener.blpop([reply], timeout=60)
        assert item is not None, f"only {len(results)} of {jobs} jobs ended"
        results.append(CompletionResult.model_validate_json(item[1]))
    listener.close()
    succeeded = [r for r in results if r.status == "succeeded"]
    refused = [r for r in results if r.error is not None and r.error.type == "budget_exceeded"]
    assert len(succeeded) + len(refused) == jobs
    assert all(f"{kind}:capped" in (r.error.message if r.error else "") for r in refused)
    # the kill switch stops new jobs at 90 % of the scope's limit; in-flight reservations may land past it
    assert 0.85 * fits <= len(succeeded) <= fits
    assert simulator.simulator.stats.requests == len(succeeded)
    status = {s.scope: s for s in admin.show().scopes}
    capped = status[f"{kind}:capped"]
    assert capped.limit_usd is not None and capped.spent_usd <= capped.limit_usd
    assert capped.reserved_usd == 0 and status["global"].reserved_usd == 0
    charged = sum(to_micros(Decimal(str(r.cost_usd))) for r in succeeded) / 1e6
    assert capped.spent_usd == pytest.approx(charged, abs=1e-9)
    # llmq spend: every dimension's rows (plus other) equal the sum of the results that carry them
    for by, key in (("tenant", lambda r: [r.tenant]), ("tag", lambda r: r.tags), ("user", lambda r: [r.user])):
        proc = subprocess.run(
            [sys.executable, "-m", "llmq.cli", "spend", "--by", by, "--since", "1d", "--json"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}, "LLMQ_REDIS_URL": redis_url},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        want: dict[str, float] = {}
        for r in succeeded:
            for value in key(r):
                if value is not None:
                    want[value] = want.get(value, 0) + to_micros(Decimal(str(r.cost_usd))) / 1e6
        got = {row["value"]: row["spent_usd"] for row in report["rows"]}
        assert got == pytest.approx(want, abs=1e-9) and report["other_usd"] == 0
        assert report["total_usd"] == pytest.approx(charged, abs=1e-9)


class TestBudgetBackpressure:
    """Worst cases that do not fit the budget together, real costs that do: jobs wait, none fails."""

    JOBS = 40
    SLOTS = 3  # worst cases that fit the budget at once; 16 worker threads want more

    @staticmethod
    def _worst_case() -> Decimal:
        from workers.accounting.tokens import TokenCounter
        from workers.contract import Message

        prompt = TokenCounter().count(MODEL, [Message(**PROMPT[0])]).tokens
        worst = PriceBook().lookup(MODEL).worst_case_cost(prompt, 1000)
        assert worst is not None
        return worst

    @pytest.fixture
    def worker_settings(self, redis_url: str) -> Settings:
        budget = float(self._worst_case() * self.SLOTS)
        assert (
            self.JOBS * _job_cost() < Decimal(budget) * Decimal("0.9") / 2
        )  # real costs fit, far below the kill switch
        return Settings(
            redis_url=redis_url, pool="threads", concurrency=16, claim_lease_s=10, monthly_budget_usd=budget
        )

    def test_jobs_wait_for_reservations_in_flight_instead_of_failing(
        self, worker, client: Client, simulator: SimulatorThread, redis_url: str, worker_settings: Settings
    ) -> None:
        simulator.simulator.config.latency = 0.3  # calls overlap: more worst cases in flight than fit
        reply = "llmq:reply:backpressure"
        for i in range(self.JOBS):
            client.submit(
                {"model": MODEL, "messages": PROMPT, "max_tokens": 1000, "stream": i % 2 == 0, "reply_to": reply}
            )
        listener = redis.Redis.from_url(redis_url)
        results = []
        for _ in range(self.JOBS):
            item = listener.blpop([reply], timeout=120)
            assert item is not None, f"only {len(results)} of {self.JOBS} jobs ended"
            results.append(CompletionResult.model_validate_json(item[1]))
        listener.close()
        assert [r.status for r in results] == ["succeeded"] * self.JOBS, [r.error for r in results if r.error]
        spent, reserved, limit = _global(redis_url, worker_settings.monthly_budget_usd)
        assert limit is not None and spent <= limit and reserved == 0
        assert simulator.simulator.stats.requests == self.JOBS  # one upstream request per job, none wasted
        waits = [a for r in results for a in r.attempts if a.error_type == "budget_wait"]
        assert waits and all(a.status == "failed" and a.http_status is None for a in waits)

    def test_a_job_whose_own_worst_case_cannot_fit_fails_at_once(
        self, worker, client: Client, simulator: SimulatorThread, redis_url: str
    ) -> None:
        handle = client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 100_000})
        result = handle.result(timeout=30)
        assert result.status == "failed" and result.error is not None and result.error.type == "budget_exceeded"
        assert simulator.simulator.stats.requests == 0
        assert redis.Redis.from_url(redis_url).hget(JobKeys(handle.id).meta, "requeues") is None  # no waiting
        _, reserved, _ = _global(redis_url)
        assert reserved == 0


class TestContextWindow:
    @pytest.fixture
    def worker_settings(self, redis_url: str, tmp_path: Path) -> Settings:
        config = tmp_path / "llmq.toml"
        config.write_text('[models."openai:gpt-4o-mini"]\ncontext_window = 300\n')
        return Settings(redis_url=redis_url, pool="threads", concurrency=8, config=str(config))

    def _conversation(self) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": "You are terse."}]
        for i in range(12):
            turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 30})
        turns.append({"role": "user", "content": "and finally?"})
        return turns

    def test_over_the_window_is_refused_before_any_request(
        self, worker, client: Client, simulator: SimulatorThread
    ) -> None:
        handle = client.submit({"model": MODEL, "messages": self._conversation(), "max_tokens": 50})
        result = handle.result(timeout=30)
        assert result.status == "failed" and result.error.type == "context_length_exceeded"
        assert not result.error.retryable and "300-token context window" in result.error.message
        assert simulator.simulator.stats.requests == 0

    def test_sliding_window_trims_and_succeeds(self, worker, client: Client, simulator: SimulatorThread) -> None:
        handle = client.submit(
            {"model": MODEL, "messages": self._conversation(), "max_tokens": 50, "truncate": "sliding_window"}
        )
        result = handle.result(timeout=30)
        assert result.status == "succeeded"
        assert result.truncated_messages > 0
        assert simulator.simulator.stats.requests == 1


def test_stream_without_usage_is_settled_with_a_labelled_estimate(
    worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    result = client.submit({"model": f"{MODEL}~nousage", "messages": PROMPT, "max_tokens": 64}).result(timeout=30)
    assert result.status == "succeeded"
    assert result.usage.estimated and result.usage.completion_tokens >= 20 and result.usage.prompt_tokens > 0
    assert result.cost_usd and result.cost_usd > 0
    spent, reserved, _ = _global(redis_url)
    assert spent == pytest.approx(result.cost_usd, abs=2e-6) and reserved == 0


def test_cost_is_recorded_for_priced_models(worker, client: Client, redis_url: str) -> None:
    result = client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20}).result(timeout=30)
    assert result.cost_usd == pytest.approx(float(_job_cost()), rel=1e-6)
    assert not result.usage.estimated
    assert _global(redis_url)[0] == pytest.approx(result.cost_usd, abs=2e-6)


def test_prompt_cache_reads_are_billed_at_the_cache_rate(worker, client: Client, redis_url: str) -> None:
    """The simulator reports 5 of the prompt's tokens as cache reads (``~cache@5``): the result says
    so, and the ledger charges them at gpt-4o-mini's cache-read rate, not the input rate."""
    result = client.submit({"model": f"{MODEL}~cache@5", "messages": PROMPT, "max_tokens": 20}).result(timeout=30)
    assert result.status == "succeeded" and result.usage.cached_tokens == 5
    usage = Usage(prompt_tokens=result.usage.prompt_tokens, completion_tokens=20, cached_tokens=5)
    want = PriceBook().lookup(MODEL).cost(usage)
    assert want is not None and want < _job_cost()
    assert result.cost_usd == pytest.approx(float(want), rel=1e-6)
    assert _global(redis_url)[0] == pytest.approx(result.cost_usd, abs=2e-6)


def test_unpriced_model_is_refused_by_policy(worker, client: Client, simulator: SimulatorThread) -> None:
    result = client.submit({"model": "openai:my-private-finetune", "messages": PROMPT}).result(timeout=30)
    assert result.status == "failed" and result.error.code == "unpriced_model"
    assert simulator.simulator.stats.requests == 0
