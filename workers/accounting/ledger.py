"""The money ledger: atomic reservations across scopes, idempotent settlement, leases, kill switch.

Every job attempt goes through ``reserve -> provider call -> settle`` (or ``release`` when the
call failed before anything was billed). Each operation is one Lua script (``workers/accounting/lua``), so
all scopes change together or not at all, and concurrent workers can never jointly overshoot.

Scopes: ``global`` (the whole deployment) and ``tenant:<name>``, each per UTC calendar month
(``YYYY-MM`` in the keys; the month comes from an injectable clock). Per scope:

- **hard limit**: a reservation is refused when ``spent + reserved + amount > limit``. Refused
  *for good* (``budget_limit``) when settled spend plus the amount alone passes the limit; refused
  *for now* (:class:`BudgetBusyError`, ``budget_busy``) when it would fit once the reservations in
  flight settle: the job waits for them (re-queued, holding no worker slot) instead of failing;
- **kill switch**: once *settled* spend reaches ``kill_ratio × limit`` (0.9 by default), every new
  reservation in that scope is refused, whatever its size. It uses settled spend, not
  reservations, so a burst of in-flight worst cases cannot trip it falsely (LiteLLM #36926).
  It applies to tenant scopes too: same rule everywhere.

The kill switch and the hard limit raise :class:`BudgetExceededError` (non-retryable) with
``code`` ``kill_switch`` or ``budget_limit`` (the latter may fit a cheaper model: the fallback
chain can try the next one); a busy budget raises :class:`BudgetBusyError`.
Limits live in Redis (``Ledger.set_limit`` / ``llmq budget set``) and win over the defaults given
to the constructor (``LLMQ_MONTHLY_BUDGET_USD`` or the config); a scope with neither is
accounted but unlimited; a limit of 0 refuses everything.

Reservations are leases (``lease_s``; use the job's hard time limit): a dead worker's reservation
is purged by the next script touching the scope. Lease expiry uses Redis' own clock, so worker
clock skew does not matter. Settlement is keyed by ``job_id`` + ``attempt`` and remembered for
62 days: a redelivered job that re-runs attempt 1 is charged once, and ``reserve`` tells it
(``Reservation.already_settled``). Money is integer micro-USD in Redis (no float drift);
amounts are rounded *up* to the micro-dollar.

Redis unreachable (or any Redis error) ⇒ :class:`LedgerUnavailableError`, a
``BudgetExceededError``: we fail closed rather than spend without accounting.

With a replica to lose writes to (Redis Sentinel), each reservation and settlement can be followed,
on the same connection and in the same round trip, by ``WAIT numreplicas timeout_ms``
(:class:`ReplicaWait`): the call returns once that many replicas hold the write, or when the timeout
passes. Fewer acknowledgements are logged and counted (``ReplicaWait.short``), never an error: the
money was accounted on the master, and failing the job would not un-spend it. WAIT narrows the
window in which a fail-over forgets a settlement to (almost) nothing; it is not strong consistency:
a replica that acknowledged may still not be the one promoted, and a write the timeout left
unacknowledged is lost if the master dies before it reaches a replica.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from importlib import resources
from typing import Any, Literal

import redis
from pydantic import BaseModel

from workers.llm.errors import BudgetBusyError, BudgetExceededError

__all__ = [
    "GLOBAL_SCOPE",
    "BudgetSnapshot",
    "Ledger",
    "LedgerUnavailableError",
    "ReplicaWait",
    "Reservation",
    "ScopeState",
    "ScopeStatus",
    "Settlement",
    "from_micros",
    "tenant_scope",
    "to_micros",
]

log = logging.getLogger("llmq.ledger")

GLOBAL_SCOPE = "global"
MICROS = 1_000_000
#: Month keys outlive their month so ``llmq budget show --month`` can look back a year.
MONTH_TTL_S = 400 * 86_400
#: How long "job X attempt N was settled" is remembered (any redelivery comes far sooner).
SETTLED_TTL_S = 62 * 86_400


class LedgerUnavailableError(BudgetExceededError):
    """The ledger could not be reached; nothing is spent without accounting (fail closed)."""

    type_name = "ledger_unavailable"


def to_micros(amount_usd: Decimal | float | int) -> int:
    """USD -> integer micro-USD, rounded up (a reservation never under-covers)."""
    value = amount_usd if isinstance(amount_usd, Decimal) else Decimal(str(amount_usd))
    if value < 0 or not value.is_finite():
        raise ValueError(f"amount must be a finite, non-negative number of USD, not {amount_usd!r}")
    return int((value * MICROS).to_integral_value(rounding=ROUND_CEILING))


def from_micros(micros: int) -> Decimal:
    return Decimal(micros) / MICROS


def tenant_scope(tenant: str) -> str:
    return f"tenant:{tenant}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class ScopeState:
    """One scope right after an operation; ``limit_micros`` None = unlimited."""

    scope: str
    spent_micros: int
    reserved_micros: int
    limit_micros: int | None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A held worst-case amount. Pass it back to :meth:`Ledger.settle` or :meth:`Ledger.release`.

    ``already_settled``: this job attempt was settled before (a redelivery); nothing is held and
    ``settled_micros`` says what was charged then.
    """

    job_id: str
    attempt: int
    tenant: str
    month: str
    amount_micros: int
    expires_at_ms: int = 0
    scopes: tuple[ScopeState, ...] = ()
    already_settled: bool = False
    settled_micros: int | None = None

    @property
    def id(self) -> str:
        return f"{self.job_id}#{self.attempt}"

    @property
    def amount_usd(self) -> Decimal:
        return from_micros(self.amount_micros)


@dataclass(frozen=True, slots=True)
class Settlement:
    """``charged`` False means a duplicate: ``amount_micros`` was charged by the first settle."""

    charged: bool
    amount_micros: int
    scopes: tuple[ScopeState, ...] = ()


class ScopeStatus(BaseModel):
    scope: str
    spent_usd: float
    reserved_usd: float
    limit_usd: float | None
    #: Spend at which the kill switch refuses new jobs (None when unlimited).
    kill_switch_usd: float | None
    remaining_usd: float | None
    state: Literal["ok", "kill_switch", "exhausted", "unlimited"]


class BudgetSnapshot(BaseModel):
    month: str
    kill_ratio: float
    scopes: list[ScopeStatus]


class ReplicaWait:
    """``WAIT replicas timeout_ms`` after every reservation and settlement, and what it returned.

    ``acked`` counts the writes at least ``replicas`` replicas acknowledged in time, ``short`` the
    ones fewer did (a replica down or lagging: logged, counted, not an error). Thread-safe.
    """

    def __init__(self, replicas: int, timeout_ms: int) -> None:
        if replicas < 1 or timeout_ms < 1:
            raise ValueError("WAIT needs at least one replica and a timeout of at least 1 ms (0 would block)")
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.acked = 0
        self.short = 0
        self._lock = threading.Lock()

    def record(self, op: str, acknowledged: int, what: str) -> None:
        with self._lock:
            if acknowledged >= self.replicas:
                self.acked += 1
                return
            self.short += 1
        log.warning(
            "ledger %s of %s reached %d of %d replicas within %d ms; a fail-over now could lose it",
            op,
            what,
            acknowledged,
            self.replicas,
            self.timeout_ms,
        )


def _load_script(client: redis.Redis, name: str) -> Any:
    lua = resources.files("workers.accounting") / "lua"
    return client.register_script((lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text())


class Ledger:
    """The ledger over one redis-py client (sync; safe to share between threads and greenlets).

    ``monthly_limit_usd`` and ``tenant_limits_usd`` are defaults used while Redis holds no limit
    for the scope; ``clock`` returns the current time (aware, or naive UTC) and picks the month.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        monthly_limit_usd: float | Decimal | None = None,
        tenant_limits_usd: Mapping[str, float | Decimal] | None = None,
        kill_ratio: float = 0.9,
        lease_s: float = 900.0,
        clock: Callable[[], datetime] = _utcnow,
        prefix: str = "llmq:{budget}",
        replica_wait: ReplicaWait | None = None,
    ) -> None:
        if not 0 < kill_ratio <= 1:
            raise ValueError("kill_ratio must be in (0, 1]")
        self.client = client
        self.kill_ratio = kill_ratio
        self.lease_s = lease_s
        self.clock = clock
        self.prefix = prefix  # the {hash tag} keeps every ledger key in one Redis Cluster slot
        #: WAIT for replicas after reservations and settlements (None: do not wait).
        self.replica_wait = replica_wait
        self._defaults: dict[str, int] = {}
        if monthly_limit_usd is not None:
            self._defaults[GLOBAL_SCOPE] = to_micros(monthly_limit_usd)
        for tenant, usd in (tenant_limits_usd or {}).items():
            self._defaults[tenant_scope(tenant)] = to_micros(usd)
        self._reserve = _load_script(client, "reserve")
        self._settle = _load_script(client, "settle")
        self._release = _load_script(client, "release")

    # --- keys -------------------------------------------------------------------------------------

    def month(self) -> str:
        now = self.clock()
        if now.tzinfo is not None:
            now = now.astimezone(UTC)
        return f"{now:%Y-%m}"

    @property
    def _limits_key(self) -> str:
        return f"{self.prefix}:limits"

    def _scopes_key(self, month: str) -> str:
        return f"{self.prefix}:{month}:scopes"

    def _scope_keys(self, month: str, scope: str) -> list[str]:
        base = f"{self.prefix}:{month}:{scope}"
        return [base, f"{base}:leases"]

    def _settled_key(self, job_id: str, attempt: int) -> str:
        return f"{self.prefix}:settled:{job_id}#{attempt}"

    @staticmethod
    def scopes_for(tenant: str) -> tuple[str, str]:
        return GLOBAL_SCOPE, tenant_scope(tenant)

    def _default(self, scope: str) -> str:
        value = self._defaults.get(scope)
        return "" if value is None else str(value)

    # --- the three operations ---------------------------------------------------------------------

    def reserve(
        self, job_id: str, attempt: int, tenant: str, amount_usd: Decimal | float | int, lease_s: float | None = None
    ) -> Reservation:
        """Hold ``amount_usd`` (the worst case) in every scope of ``tenant``, or raise.

        ``attempt`` numbers provider calls within the job (1-based; retries and fallbacks each
        take the next number). Reserving the same job attempt again replaces its lease.
        """
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        month, amount = self.month(), to_micros(amount_usd)
        lease_ms = max(1, math.ceil((self.lease_s if lease_s is None else lease_s) * 1000))
        scopes = self.scopes_for(tenant)
        keys = [self._limits_key, self._settled_key(job_id, attempt), self._scopes_key(month)]
        args: list[Any] = [f"{job_id}#{attempt}", amount, lease_ms, repr(self.kill_ratio), MONTH_TTL_S]
        for scope in scopes:
            keys += self._scope_keys(month, scope)
            args += [scope, self._default(scope)]
        reply = self._run(self._reserve, keys, args, "reserve", replicate=True)
        status = _s(reply[0])
        if status == "ok":
            states = _states(scopes, reply[2:])
            return Reservation(job_id, attempt, tenant, month, amount, int(reply[1]), states)
        if status == "settled":
            return Reservation(job_id, attempt, tenant, month, 0, already_settled=True, settled_micros=int(reply[1]))
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
            raise BudgetBusyError(message, code="budget_busy", details=details)
        if status == "kill_switch":
            message = (
                f"kill switch: {scope} spend ${from_micros(spent)} has reached {self.kill_ratio:.0%} of its "
                f"${from_micros(limit)} limit for {month}; new jobs are refused until the limit is raised "
                "or the month rolls over"
            )
            raise BudgetExceededError(message, code="kill_switch", details=details)
        message = (
            f"budget {scope} for {month}: reserving ${from_micros(amount)} would exceed the "
            f"${from_micros(limit)} limit (spent ${from_micros(spent)}, reserved ${from_micros(reserved)})"
        )
        raise BudgetExceededError(message, code="budget_limit", details=details)

    def settle(self, reservation: Reservation, actual_usd: Decimal | float | int) -> Settlement:
        """Charge the actual cost once per job attempt and free the lease; a repeat is a no-op."""
        actual = to_micros(actual_usd)
        if reservation.already_settled:
            return Settlement(False, reservation.settled_micros or 0)
        scopes = self.scopes_for(reservation.tenant)
        month = reservation.month
        keys = [
            self._settled_key(reservation.job_id, reservation.attempt),
            self._scopes_key(month),
            self._limits_key,
        ]
        args: list[Any] = [reservation.id, actual, SETTLED_TTL_S, MONTH_TTL_S]
        for scope in scopes:
            keys += self._scope_keys(month, scope)
            args += [scope, self._default(scope)]
        reply = self._run(self._settle, keys, args, "settle", replicate=True)
        if _s(reply[0]) == "duplicate":
            return Settlement(False, int(reply[1]))
        return Settlement(True, actual, _states(scopes, reply[1:]))

    def release(self, reservation: Reservation) -> int:
        """Free the lease without charging; returns the micro-USD it held (0 if already gone)."""
        if reservation.already_settled:
            return 0
        keys: list[str] = []
        for scope in self.scopes_for(reservation.tenant):
            keys += self._scope_keys(reservation.month, scope)
        return int(self._run(self._release, keys, [reservation.id], "release"))

    def _run(self, script: Any, keys: list[str], args: list[Any], op: str, *, replicate: bool = False) -> Any:
        try:
            if replicate and self.replica_wait is not None:
                return self._run_replicated(script, keys, args, op, self.replica_wait)
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

    # --- administration (CLI) ---------------------------------------------------------------------

    def set_limit(self, usd: Decimal | float | int | None, tenant: str | None = None) -> None:
        """Store a monthly limit for the global scope or a tenant; None removes it (defaults apply)."""
        scope = GLOBAL_SCOPE if tenant is None else tenant_scope(tenant)
        if usd is None:
            self.client.hdel(self._limits_key, scope)
        else:
            self.client.hset(self._limits_key, scope, to_micros(usd))

    def reset(self, tenant: str | None = None, month: str | None = None) -> list[str]:
        """Forget a month's spend and reservations (every scope, or one tenant's); limits stay.

        Settlement markers stay too, so a job settled before the reset is not charged again.
        """
        month = month or self.month()
        if tenant is not None:
            scopes = [tenant_scope(tenant)]
        else:
            scopes = sorted({GLOBAL_SCOPE} | {_s(s) for s in self.client.smembers(self._scopes_key(month))})
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*[k for scope in scopes for k in self._scope_keys(month, scope)])
        if tenant is None:
            pipe.delete(self._scopes_key(month))
        else:
            pipe.srem(self._scopes_key(month), scopes[0])
        pipe.execute()
        return scopes

    def show(self, month: str | None = None) -> BudgetSnapshot:
        """Spend, live reservations and limits per scope for ``month`` (default: now). Read-only."""
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


def _states(scopes: tuple[str, ...], flat: list[Any]) -> tuple[ScopeState, ...]:
    return tuple(
        ScopeState(
            scope, int(flat[3 * i]), int(flat[3 * i + 1]), None if int(flat[3 * i + 2]) < 0 else int(flat[3 * i + 2])
        )
        for i, scope in enumerate(scopes)
    )
