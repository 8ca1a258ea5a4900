"""Token, cost and budget metrics on a per-test registry."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest

from workers.accounting.ledger import BudgetSnapshot, ScopeState, ScopeStatus
from workers.accounting.metrics import build_usage_metrics
from workers.contract import Usage


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_usage_and_cost_are_counted_per_model() -> None:
    registry = CollectorRegistry()
    metrics = build_usage_metrics(registry)
    metrics.record_usage("openai:gpt-4o", Usage(prompt_tokens=100, completion_tokens=20), Decimal("0.00045"))
    metrics.record_usage("openai:gpt-4o", Usage(prompt_tokens=10, completion_tokens=5, estimated=True), 0.0001)
    metrics.record_usage("acme:mystery", Usage(prompt_tokens=7, completion_tokens=3), None)
    assert value(registry, "llm_tokens_total", model="openai:gpt-4o", type="prompt") == 110
    assert value(registry, "llm_tokens_total", model="openai:gpt-4o", type="completion") == 25
    assert value(registry, "llm_cost_dollars_total", model="openai:gpt-4o") == 0.00055
    assert value(registry, "llm_estimated_usage_total", model="openai:gpt-4o") == 1
    assert value(registry, "llm_unpriced_requests_total", model="acme:mystery") == 1
    assert value(registry, "llm_cost_dollars_total", model="acme:mystery") is None  # never a silent 0


def test_budget_gauges_from_ledger_states_and_snapshots() -> None:
    registry = CollectorRegistry()
    metrics = build_usage_metrics(registry)
    metrics.record_scopes([ScopeState("global", 1_500_000, 250_000, 10_000_000), ScopeState("tenant:a", 5, 0, None)])
    assert value(registry, "llm_budget_spend_dollars", scope="global") == 1.5
    assert value(registry, "llm_budget_reserved_dollars", scope="global") == 0.25
    assert value(registry, "llm_budget_limit_dollars", scope="global") == 10
    assert value(registry, "llm_budget_limit_dollars", scope="tenant:a") == 0
    snapshot = BudgetSnapshot(
        month="2026-01",
        kill_ratio=0.9,
        scopes=[
            ScopeStatus(
                scope="global",
                spent_usd=2.0,
                reserved_usd=0.0,
                limit_usd=10.0,
                kill_switch_usd=9.0,
                remaining_usd=8.0,
                state="ok",
            )
        ],
    )
    metrics.record_snapshot(snapshot)
    assert value(registry, "llm_budget_spend_dollars", scope="global") == 2.0


def test_registries_are_independent_and_labels_bounded() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    build_usage_metrics(first).record_usage("openai:gpt-4o", Usage(prompt_tokens=1), 0)
    build_usage_metrics(second)  # no duplicate-registration error: nothing global
    assert "llm_tokens_total{" in generate_latest(first).decode()
    label_names = {name for family in first.collect() for sample in family.samples for name in sample.labels}
    assert label_names == {"model", "type"}  # bounded: no job ids, no tenants on token metrics


def test_rate_admissions_are_read_from_the_lease_counters_when_scraped() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from workers.guards.leases import LeaseStats
    from workers.runtime.telemetry import RateAdmissionsCollector

    stats = LeaseStats()
    registry = CollectorRegistry()
    registry.register(RateAdmissionsCollector(lambda: (stats.local, stats.calls)))
    stats.local, stats.calls = 97, 3
    text = generate_latest(registry).decode()
    assert 'llmq_rate_admissions_total{via="lease"} 97.0' in text
    assert 'llmq_rate_admissions_total{via="redis"} 3.0' in text
