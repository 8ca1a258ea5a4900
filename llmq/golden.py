"""Golden files for prompts: every case of every version rendered and compared with what was reviewed.

``<dir>/<name>/golden/v<N>.<case>.json`` holds the messages version ``N`` renders for its case
``case`` (pretty JSON, so a change reviews as a readable diff). :func:`check_library` renders them
all in the worker's sandbox and reports each difference as a unified diff; with ``update`` it
rewrites the files instead. A golden file whose case no longer exists (removed or renamed) is
reported too (and deleted by ``update``), never silently ignored.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.contract import PromptVersion
from workers.prompts.loader import PromptFileError, load_library
from workers.prompts.render import render_version
from workers.prompts.sandbox import PromptSandbox, SandboxError

__all__ = ["GoldenReport", "check_library", "golden_path", "golden_text"]

_GOLDEN = re.compile(r"^v([1-9][0-9]*)\.(.+)\.json$")


@dataclass
class GoldenReport:
    passed: int = 0
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: one entry per problem: a heading line, then the diff or the explanation
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        parts = [f"{self.passed} passed", f"{len(self.failures)} failed"]
        if self.updated:
            parts.append(f"{len(self.updated)} updated")
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        return ", ".join(parts)


def golden_path(directory: Path, version: PromptVersion, case: str) -> Path:
    return directory / version.name / "golden" / f"v{version.version}.{case}.json"


def golden_text(version: PromptVersion, case: str, messages: list[dict[str, Any]]) -> str:
    body = {"prompt": version.name, "version": version.version, "case": case, "messages": messages}
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def check_library(directory: Path, *, update: bool = False, sandbox: PromptSandbox | None = None) -> GoldenReport:
    """Render every case of every version under ``directory`` and compare (or ``update``) goldens."""
    report = GoldenReport()
    sandbox = sandbox or PromptSandbox()
    try:
        versions = load_library(directory, sandbox=sandbox)
    except (PromptFileError, FileNotFoundError) as exc:
        report.failures.append(f"FAIL {exc}")
        return report
    expected_files: set[Path] = set()
    for version in versions:
        if not version.cases:
            report.notes.append(f"note {version.name} v{version.version}: no cases, nothing to compare")
        for case, variables in version.cases.items():
            path = golden_path(directory, version, case)
            expected_files.add(path)
            _check_case(report, directory, version, case, variables, path, update, sandbox)
    for name in sorted({v.name for v in versions}):
        golden_dir = directory / name / "golden"
        if not golden_dir.is_dir():
            continue
        for path in sorted(golden_dir.iterdir()):
            if path in expected_files:
                continue
            match = _GOLDEN.match(path.name)
            what = f"v{match.group(1)} has no case {match.group(2)!r}" if match else "is not a golden file name"
            if update and match:
                path.unlink()
                report.removed.append(str(path))
            else:
                report.failures.append(
                    f"FAIL {path}: stale golden file, {what} (removed or renamed? --update deletes it)"
                )
    return report


def _check_case(
    report: GoldenReport,
    directory: Path,
    version: PromptVersion,
    case: str,
    variables: dict[str, Any],
    path: Path,
    update: bool,
    sandbox: PromptSandbox,
) -> None:
    title = f"{version.name} v{version.version} case {case!r}"
    try:
        messages = render_version(version, variables, sandbox)
    except SandboxError as exc:
        report.failures.append(f"FAIL {title}: does not render: {exc}")
        return
    actual = golden_text(version, case, [m.model_dump(mode="json", exclude_none=True) for m in messages])
    expected = path.read_text(encoding="utf-8") if path.is_file() else None
    if expected == actual:
        report.passed += 1
        return
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        report.updated.append(str(path))
        return
    if expected is None:
        report.failures.append(f"FAIL {title}: no golden file {path} (llmq prompts test --update writes it)")
        return
    diff = difflib.unified_diff(
        expected.splitlines(keepends=True), actual.splitlines(keepends=True), fromfile=str(path), tofile="rendered"
    )
    report.failures.append(f"FAIL {title}: rendered messages differ from {path}\n" + "".join(diff).rstrip("\n"))
