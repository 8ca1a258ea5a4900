"""Small test doubles shared by the unit tests: a settable clock and providers pointed at a URL."""

from __future__ import annotations

from workers.llm._http import HTTPClient
from workers.llm.anthropic import AnthropicProvider
from workers.llm.base import Provider
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

__all__ = ["FakeClock", "provider_for"]


class FakeClock:
    """A clock that stands still until a test moves ``now``."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def provider_for(name: str, http: HTTPClient, base: str, *, api_key: str = "sk-test") -> Provider:
    """The ``openai``, ``anthropic`` or ``ollama`` provider talking to ``base`` (a server's root URL)."""
    if name == "openai":
        return OpenAIProvider(http, api_key=api_key, base_url=f"{base}/v1")
    if name == "anthropic":
        return AnthropicProvider(http, api_key=api_key, base_url=base)
    return OllamaProvider(http, host=base)
