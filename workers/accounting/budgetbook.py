"""The ledger's keys, limits and reads: what ``llmq budget`` and ``llmq spend`` use.

:class:`~workers.accounting.ledger.Ledger` adds the three operations a job makes (reserve, settle,
release) on top; this half needs no script but the one that stores a limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, Literal

import redis

from workers.accounting.money import (
    GLOBAL_SCOPE,
    BudgetSnapshot,
    ScopeKind,
    ScopeStatus,
    from_micros,
    scope_name,
    tenant_scope,
    to_micros,
)
from workers.accounting.spendreport import (
    DEFAULT_DAYS,
    DEFAULT_ROWS,
    Dimension,
    SpendReport,
    days_back,
    read_report,
    rows_key,
)

__all__ = ["MONTH_TTL_S", "BudgetBook", "load_script"]

#: Month keys outlive their month so ``llmq budget show --month`` can look back a year.
MONTH_TTL_S = 400 * 86_400


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_script(client: redis.Redis, name: str) -> Any:
    """A ledger script (``lua/<name>.lua`` after the shared ``lua/_lib.lua``), registered on ``client``."""
    lua = resources.files("workers.accounting") / "lua"
    return client.register_script((lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text())


class BudgetBook:
    """Limits (stored in Redis, else these defaults), key layout, and the read-only views.

    ``limits_usd`` maps a scope kind (``tenant``, ``tag``, ``user``) to default limits per value.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        monthly_limit_usd: float | Decimal | None = None,
        limits_usd: Mapping[ScopeKind, Mapping[str, float | Decimal]] | None = None,
        kill_ratio: float = 0.9,
        clock: Callable[[], datetime] = _utcnow,
        prefix: str = "llmq:{budget}",
        report_rows: Mapping[Dimension, int] | None = None,
        report_days: int = DEFAULT_DAYS,
    ) -> None:
        if not 0 < kill_ratio <= 1:
            raise ValueError("kill_ratio must be in (0, 1]")
        self.client = client
        self.kill_ratio = kill_ratio
        self.clock = clock
        self.prefix = prefix  # the {hash tag} keeps every ledger key in one Redis Cluster slot
        self.report_rows: dict[Dimension, int] = {**DEFAULT_ROWS, **(report_rows or {})}
        if min(self.report_rows.values()) < 1 or report_days < 1:
            raise ValueError("the spend report keeps at least one row per dimension, for at least one day")
        self.report_days = report_days
        self._defaults: dict[str, int] = {}
        #: Per report dimension, the JSON list of its values with a configured limit (built on first use).
        self._pins: dict[str, str] = {}
        if monthly_limit_usd is not None:
            self._defaults[GLOBAL_SCOPE] = to_micros(monthly_limit_usd)
        for kind, limits in (limits_usd or {}).items():
            for value, usd in limits.items():
                self._defaults[scope_name(kind, value)] = to_micros(usd)
        self._limit = load_script(client, "limit")

    # --- keys -------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self.clock()
        return now.astimezone(UTC) if now.tzinfo is not None else now

    def month(self) -> str:
        return f"{self._now():%Y-%m}"

    @property
    def _limits_key(self) -> str:
        return f"{self.prefix}:limits"

    def _scopes_key(self, month: str) -> str:
        return f"{self.prefix}:{month}:scopes"

    def _scope_keys(self, month: str, scope: str) -> list[str]:
        base = f"{self.prefix}:{month}:{scope}"
        return [base, f"{base}:leases"]

    @staticmethod
    def scopes_for(tenant: str, tags: Sequence[str] = (), user: str | None = None) -> tuple[str, ...]:
        """The budget scopes of a job: global, its tenant, then each tag and its user."""
        names = [GLOBAL_SCOPE, tenant_scope(tenant), *(scope_name("tag", t) for t in tags)]
        return (*names, scope_name("user", user)) if user is not None else tuple(names)

    def _default(self, scope: str) -> str:
        value = self._defaults.get(scope)
        return "" if value is None else str(value)

    # --- administration (CLI) ---------------------------------------------------------------------

    def set_limit(
        self,
        usd: Decimal | float | int | None,
        tenant: str | None = None,
        *,
        tag: str | None = None,
        user: str | None = None,
    ) -> None:
        """Store a monthly limit for the global scope, a tenant, a tag or an end user (at most one of
        them); None removes it (defaults apply). A tag or user that had no limit this month starts
        from the spend its month row shows."""
        scope, kind, value = _one_scope(tenant, tag, user)
        if kind is None:
            if usd is None:
                self.client.hdel(self._limits_key, scope)
            else:
                self.client.hset(self._limits_key, scope, to_micros(usd))
            return
        month = self.month()
        keys = [
            self._limits_key,
            self._scope_keys(month, scope)[0],
            self._scopes_key(month),
            rows_key(self.prefix, month, kind),
        ]
        self._limit(keys=keys, args=[scope, "" if usd is None else to_micros(usd), value, MONTH_TTL_S])

    def reset(
        self,
        tenant: str | None = None,
        month: str | None = None,
        *,
        tag: str | None = None,
        user: str | None = None,
    ) -> list[str]:
        """Forget a month's spend and reservations (every scope, or one tenant's, tag's or user's);
        limits stay, and so do the spend report's rows (a record of what was charged).

        Settlement markers stay too, so a job settled before the reset is not charged again.
        """
        month = month or self.month()
        one = None if tenant is None and tag is None and user is None else _one_scope(tenant, tag, user)[0]
        if one is not None:
            scopes = [one]
        else:
            scopes = sorted({GLOBAL_SCOPE} | {_s(s) for s in self.client.smembers(self._scopes_key(month))})
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*[k for scope in scopes for k in self._scope_keys(month, scope)])
        if one is None:
            pipe.delete(self._scopes_key(month))
        else:
            pipe.srem(self._scopes_key(month), one)
        pipe.execute()
        return scopes

    def show(self, month: str | None = None) -> BudgetSnapshot:
        """Spend, live reservations and limits per scope for ``month`` (default: now). Read-only.

        Tags and users appear once they have a limit (without one they keep no budget state: see
        :meth:`report` for what they spent)."""
        month = month or self.month()
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.smembers(self._scopes_key(month))
        pipe.hgetall(self._limits_key)
        (secs, usecs), members, stored = pipe.execute()
        now_ms = int(secs) * 1000 + int(usecs) // 1000
        limits = {scope: int(v) for scope, v in self._defaults.items()}
        limits.update({_s(k): int(v) for k, v in stored.items()})
        scopes = sorted({GLOBAL_SCOPE} | {_s(m) for m in members} | set(limits), key=lambda s: (s != GLOBAL_SCOPE, s))
        pipe = self.client.pipeline(transaction=False)
        for scope in scopes:
            state_key, leases_key = self._scope_keys(month, scope)
            pipe.hgetall(state_key)
            pipe.zrangebyscore(leases_key, f"({now_ms}", "+inf")
        replies = pipe.execute()
        statuses = []
        for i, scope in enumerate(scopes):
            fields, live = replies[2 * i], replies[2 * i + 1]
            state = {_s(k): int(v) for k, v in fields.items()}
            reserved = sum(state.get(f"r:{_s(r)}", 0) for r in live)  # expired leases excluded
            statuses.append(self._status(scope, state.get("spent", 0), reserved, limits.get(scope)))
        return BudgetSnapshot(month=month, kill_ratio=self.kill_ratio, scopes=statuses)

    def report(
        self, by: Dimension, *, days: int | None = None, month: str | None = None, top: int | None = None
    ) -> SpendReport:
        """Spend by tenant, model, tag or user over the last ``days`` UTC days (today included) or
        over one ``month`` (default: this month). Read-only."""
        if days is not None and month is not None:
            raise ValueError("give days or a month, not both")
        if days is not None:
            if not 1 <= days <= self.report_days:
                raise ValueError(f"days must be 1-{self.report_days} (day rows are kept {self.report_days} days)")
            periods = days_back(self._now().date(), days)
        else:
            periods = [month or self.month()]
        return read_report(self.client, self.prefix, by, periods, top)

    def _status(self, scope: str, spent: int, reserved: int, limit: int | None) -> ScopeStatus:
        state: Literal["ok", "kill_switch", "exhausted", "unlimited"]
        if limit is None:
            state, kill, remaining = "unlimited", None, None
        else:
            kill = float(from_micros(limit)) * self.kill_ratio
            remaining = float(from_micros(max(0, limit - spent - reserved)))
            state = "exhausted" if spent >= limit else "kill_switch" if spent >= limit * self.kill_ratio else "ok"
        return ScopeStatus(
            scope=scope,
            spent_usd=float(from_micros(spent)),
            reserved_usd=float(from_micros(reserved)),
            limit_usd=None if limit is None else float(from_micros(limit)),
            kill_switch_usd=kill,
            remaining_usd=remaining,
            state=state,
        )


def _one_scope(tenant: str | None, tag: str | None, user: str | None) -> tuple[str, ScopeKind | None, str]:
    """The scope named by at most one of tenant, tag and user (none: global)."""
    named: tuple[tuple[ScopeKind, str | None], ...] = (("tenant", tenant), ("tag", tag), ("user", user))
    given = [(kind, value) for kind, value in named if value is not None]
    if len(given) > 1:
        raise ValueError("name one scope: a tenant, a tag or a user")
    if not given:
        return GLOBAL_SCOPE, None, ""
    kind, value = given[0]
    return scope_name(kind, value), kind, value
