"""The ledger's value types: integer micro-USD, budget scopes, reservations, settlements, snapshots.

Money is integer micro-USD in Redis (no float drift); amounts are rounded *up* to the micro-dollar,
so a reservation never under-covers. A scope is ``global``, ``tenant:<name>``, ``tag:<tag>`` or
``user:<end user>``: every job reserves against the first two; a tag or user scope takes part
only while it has a monthly limit (see :mod:`workers.accounting.ledger`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Literal

from pydantic import BaseModel

__all__ = [
    "GLOBAL_SCOPE",
    "MICROS",
    "BudgetSnapshot",
    "Reservation",
    "ScopeState",
    "ScopeStatus",
    "Settlement",
    "from_micros",
    "scope_name",
    "tenant_scope",
    "to_micros",
]

GLOBAL_SCOPE = "global"
MICROS = 1_000_000

#: The kinds of scope a limit can be set on besides ``global`` (also the spend report's dimensions).
ScopeKind = Literal["tenant", "tag", "user"]


def to_micros(amount_usd: Decimal | float | int) -> int:
    """USD -> integer micro-USD, rounded up (a reservation never under-covers)."""
    value = amount_usd if isinstance(amount_usd, Decimal) else Decimal(str(amount_usd))
    if value < 0 or not value.is_finite():
        raise ValueError(f"amount must be a finite, non-negative number of USD, not {amount_usd!r}")
    return int((value * MICROS).to_integral_value(rounding=ROUND_CEILING))


def from_micros(micros: int) -> Decimal:
    return Decimal(micros) / MICROS


def scope_name(kind: ScopeKind, value: str) -> str:
    """``tenant:acme``, ``tag:checkout``, ``user:u-42``."""
    return f"{kind}:{value}"


def tenant_scope(tenant: str) -> str:
    return scope_name("tenant", tenant)


@dataclass(frozen=True, slots=True)
class ScopeState:
    """One scope right after an operation; ``limit_micros`` None = unlimited."""

    scope: str
    spent_micros: int
    reserved_micros: int
    limit_micros: int | None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A held worst-case amount. Pass it back to ``Ledger.settle`` or ``Ledger.release``.

    ``already_settled``: this job attempt was settled before (a redelivery); nothing is held and
    ``settled_micros`` says what was charged then. ``tags``, ``user`` and ``model`` are who the
    spend is counted for when it settles; ``held`` names the scopes that hold the amount.
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
    tags: tuple[str, ...] = ()
    user: str | None = None
    model: str = ""
    day: str = ""

    @property
    def id(self) -> str:
        return f"{self.job_id}#{self.attempt}"

    @property
    def amount_usd(self) -> Decimal:
        return from_micros(self.amount_micros)

    @property
    def held(self) -> tuple[str, ...]:
        return tuple(s.scope for s in self.scopes)


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
