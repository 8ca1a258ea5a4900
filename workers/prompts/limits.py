"""The render cap and the sandbox's refusal, apart from the sandbox itself (which imports Jinja2), so
that rendering a job without a prompt, and everything that imports the renderer, does not load Jinja2."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_CHARS", "SandboxError"]

DEFAULT_MAX_CHARS = 1_000_000


class SandboxError(ValueError):
    """A template broke a sandbox rule (unsafe attribute, refused operation)."""
