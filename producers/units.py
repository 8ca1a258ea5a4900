"""How amounts read where people see them (the CLI's tables, a batch's progress)."""

from __future__ import annotations

__all__ = ["usd"]


def usd(value: float | None) -> str:
    """``$1,234.50``, ``$0.000125``: cents always, micro-dollars when there are any; ``-`` for None.
    (A batch of cheap calls costs $0.000039, which four decimals showed as $0.0000: nothing.)"""
    if value is None:
        return "-"
    whole, _, frac = f"{value:,.6f}".partition(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"
