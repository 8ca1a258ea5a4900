"""Pass one of a batch run: every line validated, streaming, before anything is enqueued.

Errors name the line and the field (see :mod:`producers.batch.formats`); duplicate
``custom_id`` s are found with an :class:`~producers.batch.files.IdSet` (a few bytes per id), so a
file of a million lines validates in flat, small memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from producers.batch.files import IdSet, iter_lines
from producers.batch.formats import LineError, LineIssue, ParsedLine, parse_line

__all__ = ["MAX_REPORTED_ISSUES", "BatchValidationError", "ValidationReport", "validate_file"]

#: Issues kept in memory (and shown) when a file has many invalid lines; all are counted.
MAX_REPORTED_ISSUES = 100


class BatchValidationError(ValueError):
    """Invalid input lines and no ``skip_invalid``: nothing was enqueued."""

    def __init__(self, report: ValidationReport) -> None:
        shown = "\n".join(f"  {issue}" for issue in report.issues[:20])
        more = report.invalid_count - min(20, len(report.issues))
        tail = f"\n  ... and {more} more invalid line(s)" if more > 0 else ""
        super().__init__(f"{report.invalid_count} invalid line(s), nothing was enqueued:\n{shown}{tail}")
        self.report = report


@dataclass
class ValidationReport:
    lines: int = 0
    valid: int = 0
    #: valid lines whose custom_id is not in the outputs yet
    todo: int = 0
    #: valid lines an earlier run wrote to the errors file as failed (not run again)
    earlier_failed: int = 0
    invalid_count: int = 0
    invalid_lines: set[int] = field(default_factory=set)
    #: the first :data:`MAX_REPORTED_ISSUES` issues
    issues: list[LineIssue] = field(default_factory=list)


def validate_file(
    path: str | Path,
    *,
    model: str | None = None,
    done: IdSet | None = None,
    failed: IdSet | None = None,
    on_invalid: Callable[[list[LineIssue]], None] | None = None,
    check: Callable[[ParsedLine], list[LineIssue]] | None = None,
) -> ValidationReport:
    """Validate every line of ``path`` (streaming); ``on_invalid`` sees each invalid line's issues.

    ``done`` holds the custom_ids earlier runs wrote (not to do again), ``failed`` those of them that
    failed (counted in :attr:`ValidationReport.earlier_failed`).

    ``check`` runs on each well-formed line still to do and returns its further issues: the batch
    runner passes the producer's own checks (a published prompt's variables against its version's
    schema, worker tools registered), so those are found here too, before anything is enqueued.
    """
    report = ValidationReport()
    seen = IdSet()
    for number, raw in iter_lines(path):
        report.lines += 1
        try:
            parsed = parse_line(raw, number, default_model=model)
            issues: list[LineIssue] = []
            custom_id: str | None = parsed.custom_id
        except LineError as exc:
            parsed, issues = None, exc.issues
            custom_id = next((i.custom_id for i in issues if i.custom_id), None)
        if custom_id is not None:
            first = seen.add(custom_id, number)
            if first is not None:
                message = f"duplicate custom_id {custom_id!r} (first on line {first})"
                issues.append(LineIssue(number, "duplicate_custom_id", message, "custom_id", custom_id))
        todo = parsed is not None and (done is None or parsed.custom_id not in done)
        if not issues and todo and check is not None:
            assert parsed is not None
            issues = check(parsed)
        if not issues:
            report.valid += 1
            if todo:
                report.todo += 1
            elif failed is not None and parsed is not None and parsed.custom_id in failed:
                report.earlier_failed += 1
            continue
        report.invalid_count += 1
        report.invalid_lines.add(number)
        if len(report.issues) < MAX_REPORTED_ISSUES:
            report.issues.extend(issues[: MAX_REPORTED_ISSUES - len(report.issues)])
        if on_invalid is not None:
            on_invalid(issues)
    return report
