"""The money ledger: atomic reservations across scopes, idempotent settlement, leases, kill switch.

Every job attempt goes through ``reserve -> provider call -> settle`` (or ``release`` when the call
failed before anything was billed); each operation is one Lua script (``workers/accounting/lua``), so
all scopes (global, tenant, tag, user; per UTC month) change together or not at all. A hard limit
refuses a reservation for good (``budget_limit``) or for now (:class:`BudgetBusyError`); the kill
switch refuses every new one past ``kill_ratio`` of the limit; settlement is keyed by job and attempt
(charged once); Redis unreachable is :class:`LedgerUnavailableError` (fail closed).

The rules, the leases, the replica wait and why each choice: ``docs/ledger.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import redis

from workers.accounting.budgetbook import MONTH_TTL_S, BudgetBook, load_script
from workers.accounting.money import (
    GLOBAL_SCOPE,
    BudgetSnapshot,
    Reservation,
    ScopeState,
    ScopeStatus,
    Settlement,
    from_micros,
    tenant_scope,
    to_micros,
)
from workers.accounting.replicas import ReplicaWait
from workers.accounting.settlekeeper import SettleKeeper
from workers.accounting.spendreport import DEFAULT_DAYS, Dimension, other_key, rows_key
from workers.connections.pipescript import queue_script
from workers.llm.errors import BudgetBusyError, BudgetExceededError, LLMQError
from workers.routes import LLMQConfig
from workers.settings import Settings

__all__ = [
    "GLOBAL_SCOPE",
    "BudgetSnapshot",
    "Ledger",
    "LedgerUnavailableError",
    "ReplicaWait",
    "Reservation",
    "ReserveCall",
    "ScopeState",
    "ScopeStatus",
    "Settlement",
    "configured_ledger",
    "from_micros",
    "tenant_scope",
    "to_micros",
]

#: How long "job X attempt N was settled" is remembered (any redelivery comes far sooner).
SETTLED_TTL_S = 62 * 86_400


class LedgerUnavailableError(BudgetExceededError):
    """The ledger could not be reached; nothing is spent without accounting (fail closed)."""

    type_name = "ledger_unavailable"


class ScriptBatch(Protocol):
    """Runs one script for many callers in shared round trips (the worker's ``FlushBatcher``)."""

    def call(self, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...

    def close(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Ledger(BudgetBook):
    """The ledger over one redis-py client (sync; safe to share between threads and greenlets).

    ``monthly_limit_usd``, ``tenant_limits_usd``, ``tag_limits_usd`` and ``user_limits_usd`` are
    defaults used while Redis holds no limit for the scope; ``clock`` returns the current time
    (aware, or naive UTC) and picks the month and day. ``report_rows`` (per dimension) and
    ``report_days`` bound the spend report (:mod:`workers.accounting.spendreport`). Limits, resets
    and the reads of ``llmq budget`` and ``llmq spend`` are :class:`BudgetBook`'s.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        monthly_limit_usd: float | Decimal | None = None,
        tenant_limits_usd: Mapping[str, float | Decimal] | None = None,
        tag_limits_usd: Mapping[str, float | Decimal] | None = None,
        user_limits_usd: Mapping[str, float | Decimal] | None = None,
        kill_ratio: float = 0.9,
        lease_s: float = 900.0,
        clock: Callable[[], datetime] = _utcnow,
        prefix: str = "llmq:{budget}",
        replica_wait: ReplicaWait | None = None,
        report_rows: Mapping[Dimension, int] | None = None,
        report_days: int = DEFAULT_DAYS,
    ) -> None:
        super().__init__(
            client,
            monthly_limit_usd=monthly_limit_usd,
            limits_usd={"tenant": tenant_limits_usd or {}, "tag": tag_limits_usd or {}, "user": user_limits_usd or {}},
            kill_ratio=kill_ratio,
            clock=clock,
            prefix=prefix,
            report_rows=report_rows,
            report_days=report_days,
        )
        self.lease_s = lease_s
        #: WAIT for replicas after reservations and settlements (None: do not wait).
        self.replica_wait = replica_wait
        self._reserve = load_script(client, "reserve")
        self._settle = load_script(client, "settle")
        #: Keeps settlements Redis refused and retries them (None: a refusal raises).
        self.keeper: SettleKeeper | None = None
        self._release = load_script(client, "release")
        #: Reservations and settlements sent in batches with other jobs' (:meth:`batch_scripts`).
        self._batched: dict[str, ScriptBatch] = {}

    def batch_scripts(self, batcher: Callable[[str], ScriptBatch]) -> None:
        """Send :meth:`reserve` and :meth:`settle` through ``batcher(script text)`` (the worker's
        ``FlushBatcher``): the reservations of all the jobs of a process that reserve at once travel
        in one round trip, each caller still gets its own reply or error (a ledger script answers a
        refusal as a reply, and a repeated call of a job attempt is idempotent, as for a direct
        call). Not with a replica wait, whose ``WAIT`` must follow its script on one connection."""
        if self.replica_wait is None:
            self._batched = {"reserve": batcher(self._reserve.script), "settle": batcher(self._settle.script)}

    def close_batches(self) -> None:
        """Send what is queued and go back to a round trip per call."""
        batched, self._batched = self._batched, {}
        for batch in batched.values():
            batch.close()

    def _settled_key(self, job_id: str, attempt: int) -> str:
        return f"{self.prefix}:settled:{job_id}#{attempt}"

    def _scope_args(self, month: str, scopes: Sequence[str]) -> tuple[list[str], list[Any]]:
        """Per scope: its two keys, and its name, default limit and whether it always holds a lease
        (global and tenant do; a tag or user only while it has a limit)."""
        keys: list[str] = []
        args: list[Any] = []
        for i, scope in enumerate(scopes):
            keys += self._scope_keys(month, scope)
            args += [scope, self._default(scope), "1" if i < 2 else "0"]
        return keys, args

    # --- the three operations ---------------------------------------------------------------------

    def reserve(
        self,
        job_id: str,
        attempt: int,
        tenant: str,
        amount_usd: Decimal | float | int,
        lease_s: float | None = None,
        *,
        tags: Sequence[str] = (),
        user: str | None = None,
        model: str = "",
    ) -> Reservation:
        """Hold ``amount_usd`` (the worst case) in every scope of ``tenant`` (and of ``tags`` and
        ``user`` that have a limit), or raise.

        ``attempt`` numbers provider calls within the job (1-based; retries and fallbacks each
        take the next number). Reserving the same job attempt again replaces its lease. ``model``
        is the model called: the spend report counts the settled cost for it.
        """
        call = self.reserve_call(job_id, attempt, tenant, amount_usd, lease_s, tags=tags, user=user, model=model)
        reply = self._run(self._reserve, call.keys, call.args, "reserve", replicate=True)
        return self._reserved(call, reply)

    def reserve_many(self, calls: Sequence[ReserveCall]) -> list[Reservation | LLMQError]:
        """:meth:`reserve` of many in one round trip (a provider batch's lines, each made with
        :meth:`reserve_call`): per call its reservation, or the error :meth:`reserve` would raise.
        Redis refusing the round trip raises :class:`LedgerUnavailableError`."""
        if self.replica_wait is not None:  # WAIT after each: one by one
            out: list[Reservation | LLMQError] = []
            for c in calls:
                try:
                    out.append(self._reserved(c, self._run(self._reserve, c.keys, c.args, "reserve", replicate=True)))
                except LLMQError as exc:
                    out.append(exc)
            return out
        pipe = self.client.pipeline(transaction=False)
        for c in calls:
            queue_script(pipe, self._reserve, c.keys, c.args)
        try:
            replies = pipe.execute() if calls else []
        except redis.RedisError as exc:
            raise LedgerUnavailableError(
                f"budget ledger unavailable during reserve ({type(exc).__name__}: {exc}); "
                "refusing to spend without accounting",
                code="ledger_unavailable",
            ) from exc
        found: list[Reservation | LLMQError] = []
        for c, reply in zip(calls, replies, strict=True):
            try:
                found.append(self._reserved(c, reply))
            except LLMQError as exc:
                found.append(exc)
        return found

    def reserve_call(
        self,
        job_id: str,
        attempt: int,
        tenant: str,
        amount_usd: Decimal | float | int,
        lease_s: float | None = None,
        *,
        tags: Sequence[str] = (),
        user: str | None = None,
        model: str = "",
    ) -> ReserveCall:
        """A :meth:`reserve` to make with :meth:`reserve_many` (or at once, by :meth:`reserve`)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        now = self._now()
        month, day, amount = f"{now:%Y-%m}", f"{now:%Y-%m-%d}", to_micros(amount_usd)
        lease_ms = max(1, math.ceil((self.lease_s if lease_s is None else lease_s) * 1000))
        scopes = self.scopes_for(tenant, tags, user)
        scope_keys, scope_args = self._scope_args(month, scopes)
        keys = [self._limits_key, self._settled_key(job_id, attempt), self._scopes_key(month), *scope_keys]
        args: list[Any] = [f"{job_id}#{attempt}", amount, lease_ms, repr(self.kill_ratio), MONTH_TTL_S, *scope_args]
        return ReserveCall(
            job_id, attempt, tenant, month, day, amount, tuple(scopes), tuple(tags), user, model, keys, args
        )

    def _reserved(self, call: ReserveCall, reply: Any) -> Reservation:
        """The reserve script's ``reply`` to ``call``, or its refusal raised."""
        job_id, attempt, tenant, month, day, amount = (
            call.job_id, call.attempt, call.tenant, call.month, call.day, call.amount
        )  # fmt: skip
        scopes, tags, user, model = call.scopes, call.tags, call.user, call.model
        if isinstance(reply, Exception):
            raise LedgerUnavailableError(
                f"budget ledger unavailable during reserve ({type(reply).__name__}: {reply})",
                code="ledger_unavailable",
            ) from reply
        status = _s(reply[0])
        if status == "ok":
            return Reservation(
                job_id, attempt, tenant, month, amount, int(reply[1]), _states(scopes, reply[2:]),
                tags=tuple(tags), user=user, model=model, day=day,
            )  # fmt: skip
        if status == "settled":
            return Reservation(
                job_id, attempt, tenant, month, 0, already_settled=True, settled_micros=int(reply[1]),
                tags=tuple(tags), user=user, model=model, day=day,
            )  # fmt: skip
        raise _refusal(status, reply, month, amount, self.kill_ratio)

    def settle(self, reservation: Reservation, actual_usd: Decimal | float | int) -> Settlement:
        """Charge the actual cost once per job attempt, free the lease and add the cost to the spend
        report's rows; a repeat is a no-op.

        With a :attr:`keeper`, a settlement Redis refuses (full, or away) is kept and retried until
        Redis takes it (``workers/accounting/settlekeeper.py``): the call was paid, so it is never
        dropped; the returned :class:`Settlement` then says nothing was charged yet."""
        actual = to_micros(actual_usd)
        try:
            return self.settle_now(reservation, actual)
        except LedgerUnavailableError as exc:
            if self.keeper is None:
                raise
            self.keeper.keep(reservation, actual, exc)
            return Settlement(False, actual)

    def settle_many(self, items: Sequence[tuple[Reservation, Decimal | float | int]]) -> list[Settlement]:
        """:meth:`settle` of many reservations in one round trip (a provider batch's lines); the
        same script, so each is charged once however often this is repeated. Redis refusing the
        round trip: each settlement goes to the :attr:`keeper` (or the refusal is raised)."""
        if self.replica_wait is not None:  # WAIT after each: one by one
            return [self.settle(r, actual) for r, actual in items]
        out: list[Settlement | None] = [None] * len(items)
        calls: list[tuple[int, int]] = []
        pipe = self.client.pipeline(transaction=False)
        for i, (r, actual_usd) in enumerate(items):
            if r.already_settled:
                out[i] = Settlement(False, r.settled_micros or 0)
                continue
            actual = to_micros(actual_usd)
            keys, args = self._settle_call(r, actual)
            queue_script(pipe, self._settle, keys, args)
            calls.append((i, actual))
        if calls:
            try:
                replies = pipe.execute(raise_on_error=False)
            except redis.RedisError as exc:
                replies = [exc] * len(calls)
            for (i, actual), reply in zip(calls, replies, strict=True):
                r = items[i][0]
                if isinstance(reply, Exception):
                    error = LedgerUnavailableError(
                        f"budget ledger unavailable during settle ({type(reply).__name__}: {reply})",
                        code="ledger_unavailable",
                    )
                    error.__cause__ = reply
                    if self.keeper is None:
                        raise error
                    self.keeper.keep(r, actual, error)
                    out[i] = Settlement(False, actual)
                elif _s(reply[0]) == "duplicate":
                    out[i] = Settlement(False, int(reply[1]))
                else:
                    out[i] = Settlement(True, actual, _states(self.scopes_for(r.tenant, r.tags, r.user), reply[1:]))
        return [s for s in out if s is not None]

    def settle_now(self, reservation: Reservation, actual: int) -> Settlement:
        """:meth:`settle` of ``actual`` micro-USD that raises :class:`LedgerUnavailableError` when
        Redis refuses it (what the keeper retries)."""
        if reservation.already_settled:
            return Settlement(False, reservation.settled_micros or 0)
        keys, args = self._settle_call(reservation, actual)
        reply = self._run(self._settle, keys, args, "settle", replicate=True)
        if _s(reply[0]) == "duplicate":
            return Settlement(False, int(reply[1]))
        r = reservation
        return Settlement(True, actual, _states(self.scopes_for(r.tenant, r.tags, r.user), reply[1:]))

    def _settle_call(self, reservation: Reservation, actual: int) -> tuple[list[str], list[Any]]:
        """The settle script's keys and arguments for ``reservation`` charged ``actual`` micro-USD."""
        r = reservation
        scopes = self.scopes_for(r.tenant, r.tags, r.user)
        month, day = r.month, r.day or f"{self._now():%Y-%m-%d}"
        scope_keys, scope_args = self._scope_args(month, scopes)
        keys = [
            self._settled_key(r.job_id, r.attempt),
            self._scopes_key(month),
            self._limits_key,
            other_key(self.prefix, day),
            other_key(self.prefix, month),
            *scope_keys,
        ]
        day_ttl = (self.report_days + 1) * 86_400
        args: list[Any] = [r.id, actual, SETTLED_TTL_S, MONTH_TTL_S, day_ttl, len(scopes), *scope_args]
        rows: list[tuple[Dimension, str, str]] = [("tenant", r.tenant, "1")]
        if r.model:
            rows.append(("model", r.model, "0"))
        rows += [("tag", t, "1") for t in r.tags]
        if r.user is not None:
            rows.append(("user", r.user, "1"))
        for dimension, value, pinnable in rows:
            keys += [rows_key(self.prefix, day, dimension), rows_key(self.prefix, month, dimension)]
            args += [dimension, value, self.report_rows[dimension], pinnable, self._configured_rows(dimension)]
        return keys, args

    def _configured_rows(self, dimension: str) -> str:
        """The JSON list of ``dimension``'s values with a limit in the config ('' = none): their rows
        are pinned as those of stored limits are."""
        found = self._pins.get(dimension)
        if found is None:
            prefix = f"{dimension}:"
            values = [scope[len(prefix) :] for scope in self._defaults if scope.startswith(prefix)]
            found = self._pins[dimension] = json.dumps(values) if values else ""
        return found

    def release(self, reservation: Reservation) -> int:
        """Free the lease without charging; returns the micro-USD it held (0 if already gone).
        With a :attr:`keeper`, a release Redis refuses is kept and retried (0 is returned)."""
        try:
            return self.release_now(reservation)
        except LedgerUnavailableError as exc:
            if self.keeper is None:
                raise
            self.keeper.keep_release(reservation, exc)
            return 0

    def release_now(self, reservation: Reservation) -> int:
        """:meth:`release` that raises :class:`LedgerUnavailableError` when Redis refuses it."""
        r = reservation
        if r.already_settled:
            return 0
        keys: list[str] = []
        for scope in r.held or self.scopes_for(r.tenant, r.tags, r.user):  # held: those the reserve wrote
            keys += self._scope_keys(reservation.month, scope)
        return int(self._run(self._release, keys, [reservation.id], "release"))

    def _run(self, script: Any, keys: list[str], args: list[Any], op: str, *, replicate: bool = False) -> Any:
        try:
            if replicate and self.replica_wait is not None:
                return self._run_replicated(script, keys, args, op, self.replica_wait)
            batched = self._batched.get(op)
            if batched is not None:
                return batched.call(keys, args)
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise LedgerUnavailableError(
                f"budget ledger unavailable during {op} ({type(exc).__name__}: {exc}); "
                "refusing to spend without accounting",
                code="ledger_unavailable",
            ) from exc

    def _run_replicated(self, script: Any, keys: list[str], args: list[Any], op: str, wait: ReplicaWait) -> Any:
        """The script, then WAIT on the same connection (WAIT covers that connection's writes), in one
        round trip. EVALSHA directly: a pipeline running a ``Script`` asks SCRIPT EXISTS first, every time."""
        for _ in range(2):
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.wait(wait.replicas, wait.timeout_ms)
            try:
                reply, acknowledged = pipe.execute()
            except redis.exceptions.NoScriptError:  # a restarted or new master: load it, once
                script.sha = self.client.script_load(script.script)
                continue
            wait.record(op, int(acknowledged), str(args[0]))
            return reply
        raise redis.exceptions.NoScriptError(f"the ledger's {op} script could not be loaded")


@dataclass(frozen=True, slots=True)
class ReserveCall:
    """One reservation's script call, made by :meth:`Ledger.reserve_call` for :meth:`Ledger.reserve_many`."""

    job_id: str
    attempt: int
    tenant: str
    month: str
    day: str
    amount: int
    scopes: tuple[str, ...]
    tags: tuple[str, ...]
    user: str | None
    model: str
    keys: list[str]
    args: list[Any]


def _states(scopes: Sequence[str], flat: list[Any]) -> tuple[ScopeState, ...]:
    """``[index, spent, reserved, limit, ...]`` of the scopes a script wrote (index 1-based)."""
    return tuple(
        ScopeState(
            scopes[int(flat[i]) - 1],
            int(flat[i + 1]),
            int(flat[i + 2]),
            None if int(flat[i + 3]) < 0 else int(flat[i + 3]),
        )
        for i in range(0, len(flat), 4)
    )


def _refusal(
    status: str, reply: list[Any], month: str, amount: int, kill_ratio: float
) -> BudgetExceededError | BudgetBusyError:
    """The typed error for a refused reservation (``busy``, ``kill_switch`` or ``limit``)."""
    scope, spent, reserved, limit = _s(reply[1]), int(reply[2]), int(reply[3]), int(reply[4])
    details = {
        "scope": scope,
        "month": month,
        "spent_usd": float(from_micros(spent)),
        "reserved_usd": float(from_micros(reserved)),
        "limit_usd": float(from_micros(limit)),
        "amount_usd": float(from_micros(amount)),
    }
    if status == "busy":
        message = (
            f"budget {scope} for {month}: ${from_micros(amount)} fits the ${from_micros(limit)} limit "
            f"(spent ${from_micros(spent)}) but not beside the ${from_micros(reserved)} reserved in flight; "
            "waiting for those reservations to settle"
        )
        return BudgetBusyError(message, code="budget_busy", details=details)
    if status == "kill_switch":
        message = (
            f"kill switch: {scope} spend ${from_micros(spent)} has reached {kill_ratio:.0%} of its "
            f"${from_micros(limit)} limit for {month}; new jobs are refused until the limit is raised "
            "or the month rolls over"
        )
        return BudgetExceededError(message, code="kill_switch", details=details)
    message = (
        f"budget {scope} for {month}: reserving ${from_micros(amount)} would exceed the "
        f"${from_micros(limit)} limit (spent ${from_micros(spent)}, reserved ${from_micros(reserved)})"
    )
    return BudgetExceededError(message, code="budget_limit", details=details)


def configured_ledger(client: redis.Redis, settings: Settings, config: LLMQConfig, **options: Any) -> Ledger:
    """The ledger with the limits and report bounds of the environment and config file
    (``LLMQ_MONTHLY_BUDGET_USD`` wins over ``[budget] monthly_usd``); ``options`` go to :class:`Ledger`."""
    budget, spend = config.budget, config.spend
    monthly = settings.monthly_budget_usd if settings.monthly_budget_usd is not None else budget.monthly_usd
    return Ledger(
        client,
        monthly_limit_usd=monthly,
        tenant_limits_usd=budget.tenants,
        tag_limits_usd=budget.tags,
        user_limits_usd=budget.users,
        kill_ratio=budget.kill_switch_ratio,
        report_rows={"tenant": spend.tenants, "model": spend.models, "tag": spend.tags, "user": spend.users},
        report_days=spend.days,
        **options,
    )
