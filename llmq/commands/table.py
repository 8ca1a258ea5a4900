"""Plain-text tables for the CLI: columns padded to their widest cell, trailing spaces trimmed."""

from __future__ import annotations

from collections.abc import Sequence

from producers.units import usd

__all__ = ["print_table", "usd"]


def print_table(rows: Sequence[Sequence[str]], *, numeric: bool = False) -> None:
    """Print ``rows`` (the first is the header); ``numeric`` right-aligns every column but the first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (
            cell.rjust(w) if numeric and i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells).rstrip())
