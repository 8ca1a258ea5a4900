"""``ast.parse`` for tests that read the project's source."""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse_file(path: Path, source: str | None = None) -> ast.Module:
    """``ast.parse`` of ``path`` with the garbage collector held off: on CPython 3.11, a collection that
    runs finalizers (left by earlier tests: event loops, Redis connections) in the middle of building
    the tree trips its recursion check ("AST constructor recursion depth mismatch")."""
    if source is None:
        source = path.read_text()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename=str(path))
    finally:
        if enabled:
            gc.enable()
