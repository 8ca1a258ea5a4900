"""Where a worker finds the simulator: the provider base-URL variables (no server imports)."""

from __future__ import annotations

__all__ = ["provider_env"]


def provider_env(url: str) -> dict[str, str]:
    """The environment that points every provider of a worker at a simulator at ``url``."""
    return {"OPENAI_BASE_URL": f"{url}/v1", "ANTHROPIC_BASE_URL": url, "OLLAMA_HOST": url}
