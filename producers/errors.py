"""Errors a producer raises before anything is enqueued."""

from __future__ import annotations

from typing import Any

__all__ = ["InvalidJobError"]


class InvalidJobError(ValueError):
    """The job did not validate; nothing was enqueued. ``errors`` lists each problem."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []
