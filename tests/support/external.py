"""External tools some tests need (nginx, promtool, openssl): skipped locally, required in CI.

A CI run (``CI=true``) without the tool proves nothing, so there the test fails instead of
skipping; ``.ci/run`` installs the tools from Debian packages.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

__all__ = ["in_ci", "missing", "need_module", "need_tool"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    """Skip locally, fail in CI (``CI=true``)."""
    if in_ci():
        pytest.fail(f"{what} (required when CI=true)")
    pytest.skip(what)


def need_tool(name: str, install: str, *, also: tuple[str, ...] = ()) -> str:
    """The tool's path: on ``PATH``, or one of ``also`` (e.g. ``/usr/sbin/nginx``); else :func:`missing`."""
    path = shutil.which(name) or next((p for p in also if Path(p).exists()), None)
    if path is None:
        missing(f"{name} not found (install: {install})")
    return str(path)


def need_module(name: str, install: str) -> ModuleType:
    if importlib.util.find_spec(name) is None:
        missing(f"python module {name} not installed (install: {install})")
    return importlib.import_module(name)
