"""Which provider serves which ``provider:`` prefix, built once per worker process.

Each provider is constructed from the worker's own environment (its official variables:
``OPENAI_API_KEY``/``OPENAI_BASE_URL``, ``ANTHROPIC_API_KEY``/``ANTHROPIC_BASE_URL``,
``OLLAMA_HOST``) and shares the process's single HTTP client.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from workers.llm._http import HTTPClient
from workers.llm.anthropic import AnthropicProvider
from workers.llm.base import Provider
from workers.llm.errors import ConfigurationError
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

__all__ = ["ProviderRegistry", "build_registry", "provider_builders"]

Builder = Callable[[HTTPClient, Mapping[str, str]], Provider]


def provider_builders() -> dict[str, Builder]:
    """Name -> builder for every provider shipped with llmqueue."""
    return {
        "openai": OpenAIProvider.from_env,
        "anthropic": AnthropicProvider.from_env,
        "ollama": OllamaProvider.from_env,
    }


class ProviderRegistry:
    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            known = ", ".join(sorted(self._providers)) or "none"
            raise ConfigurationError(f"unknown provider {name!r} (known: {known})", provider=name) from None

    def names(self) -> list[str]:
        return sorted(self._providers)

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()


def build_registry(http: HTTPClient, env: Mapping[str, str] | None = None) -> ProviderRegistry:
    env = os.environ if env is None else env
    return ProviderRegistry({name: build(http, env) for name, build in provider_builders().items()})
