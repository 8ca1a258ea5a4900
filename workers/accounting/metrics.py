"""Prometheus metrics for tokens, money and budgets (the names ops/ dashboards and alerts query).

Built by :func:`build_usage_metrics` on a registry you pass in: nothing is registered at import,
and tests use a fresh ``CollectorRegistry`` each. Labels are bounded: ``model`` is a configured
``provider:model`` id, ``scope`` is ``global`` or ``tenant:<name>``; job ids belong in logs.

==================================  =======  =================================================
``llm_tokens_total``                counter  ``{model, type}``, type = ``prompt`` | ``completion`` | ``cached`` | ``cache_write`` | ``cache_write_1h`` (the last three are part of ``prompt``)
``llm_cost_dollars_total``          counter  ``{model}``, priced calls only
``llm_unpriced_requests_total``     counter  ``{model}``, calls of unpriced models (allowed by policy)
``llm_estimated_usage_total``       counter  ``{model}``, calls whose usage we estimated (no provider usage)
``llm_budget_spend_dollars``        gauge    ``{scope}``, settled spend this UTC month
``llm_budget_reserved_dollars``     gauge    ``{scope}``, live reservations
``llm_budget_limit_dollars``        gauge    ``{scope}``, monthly limit; 0 = no limit
==================================  =======  =================================================

The budget gauges are set from what the ledger returns anyway (``Reservation.scopes``,
``Settlement.scopes``), so keeping them fresh costs no extra Redis round trip; every worker
exports the same values, hence ``max by (scope)`` in the queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from workers.contract import Usage

if TYPE_CHECKING:
    from workers.accounting.ledger import BudgetSnapshot, ScopeState

__all__ = ["Children", "UsageMetrics", "build_usage_metrics"]


class Children:
    """A labelled metric's children by label values (positional, in the metric's label order), each
    looked up once: prometheus_client's ``labels()`` checks and converts its arguments on every call
    (~1.5 us; a job makes ~15 such calls). The values are the metric's own, bounded as documented."""

    __slots__ = ("_children", "_labels")

    def __init__(self, metric: Any) -> None:
        self._labels = metric.labels
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:  # two threads may both look it up: labels() gives both the same child
            child = self._children[values] = self._labels(*values)
        return child


@dataclass(frozen=True, slots=True)
class UsageMetrics:
    tokens: Counter
    cost: Counter
    unpriced: Counter
    estimated: Counter
    spend: Gauge
    reserved: Gauge
    limit: Gauge
    _tokens: Children = field(init=False, repr=False, compare=False)
    _cost: Children = field(init=False, repr=False, compare=False)
    _spend: Children = field(init=False, repr=False, compare=False)
    _reserved: Children = field(init=False, repr=False, compare=False)
    _limit: Children = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("tokens", "cost", "spend", "reserved", "limit"):
            object.__setattr__(self, f"_{name}", Children(getattr(self, name)))

    def record_usage(self, model: str, usage: Usage, cost_usd: Decimal | float | None) -> None:
        """Count one call's tokens and cost; ``cost_usd`` None marks an unpriced model."""
        self._tokens(model, "prompt").inc(usage.prompt_tokens)
        self._tokens(model, "completion").inc(usage.completion_tokens)
        if usage.cached_tokens:  # part of "prompt"; counted again here to show the cache's share
            self.tokens.labels(model=model, type="cached").inc(usage.cached_tokens)
        if usage.cache_write_tokens:
            self.tokens.labels(model=model, type="cache_write").inc(usage.cache_write_tokens)
        if usage.cache_write_1h_tokens:  # part of "cache_write"
            self.tokens.labels(model=model, type="cache_write_1h").inc(usage.cache_write_1h_tokens)
        if cost_usd is None:
            self.unpriced.labels(model=model).inc()
        else:
            self._cost(model).inc(float(cost_usd))
        if usage.estimated:
            self.estimated.labels(model=model).inc()

    def record_scopes(self, states: Iterable[ScopeState]) -> None:
        """Update the budget gauges from a ``Reservation`` or ``Settlement``'s ``scopes``."""
        for s in states:
            self._spend(s.scope).set(s.spent_micros / 1_000_000)
            self._reserved(s.scope).set(s.reserved_micros / 1_000_000)
            self._limit(s.scope).set(0 if s.limit_micros is None else s.limit_micros / 1_000_000)

    def record_snapshot(self, snapshot: BudgetSnapshot) -> None:
        """Update the budget gauges from ``Ledger.show()`` (e.g. on a timer)."""
        for s in snapshot.scopes:
            self.spend.labels(scope=s.scope).set(s.spent_usd)
            self.reserved.labels(scope=s.scope).set(s.reserved_usd)
            self.limit.labels(scope=s.scope).set(s.limit_usd or 0)


def build_usage_metrics(registry: CollectorRegistry) -> UsageMetrics:
    """Create and register the metric families on ``registry``."""
    return UsageMetrics(
        tokens=Counter("llm_tokens_total", "Tokens billed by providers.", ["model", "type"], registry=registry),
        cost=Counter("llm_cost_dollars_total", "Provider cost in USD.", ["model"], registry=registry),
        unpriced=Counter(
            "llm_unpriced_requests_total", "Calls of models with no known price.", ["model"], registry=registry
        ),
        estimated=Counter(
            "llm_estimated_usage_total", "Calls whose usage was estimated by us.", ["model"], registry=registry
        ),
        spend=Gauge("llm_budget_spend_dollars", "Settled spend this UTC month.", ["scope"], registry=registry),
        reserved=Gauge("llm_budget_reserved_dollars", "Live budget reservations.", ["scope"], registry=registry),
        limit=Gauge("llm_budget_limit_dollars", "Monthly budget limit; 0 = none.", ["scope"], registry=registry),
    )
