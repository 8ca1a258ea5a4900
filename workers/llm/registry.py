"""Which provider serves which ``<name>:`` prefix, built once per worker process.

The built-ins are constructed from the worker's own environment (their official variables:
``OPENAI_API_KEY``/``OPENAI_BASE_URL``, ``ANTHROPIC_API_KEY``/``ANTHROPIC_BASE_URL``,
``OLLAMA_HOST``); every ``[providers.<name>]`` entry of the config file
(``workers/contract/providers.py``) adds one provider of its ``type``, its key read from the
variable its ``api_key_env`` names. All share the process's single HTTP client. Whatever is
wrong with an entry (a key variable that is not set, Bedrock without the AWS extra) is a
:class:`ConfigurationError` of one line naming the setting, raised when the worker starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from workers.contract.providers import ProviderSpec
from workers.llm.anthropic import AnthropicProvider
from workers.llm.aws import AWSLibrary, load_aws
from workers.llm.azure import AzureOpenAIProvider
from workers.llm.base import Provider
from workers.llm.errors import ConfigurationError
from workers.llm.gemini import GeminiProvider
from workers.llm.httpclient import HTTPClient
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

__all__ = ["ProviderRegistry", "build_provider", "build_registry", "provider_builders"]

Builder = Callable[[HTTPClient, Mapping[str, str]], Provider]
AWSLoader = Callable[[str], AWSLibrary]

#: The variable a provider's key comes from when its entry names none (the SDKs' own names).
DEFAULT_KEY_ENV = {
    "openai": None,  # a compatible server may need no key
    "azure": "AZURE_OPENAI_API_KEY",
    "anthropic": None,
    "gemini": "GEMINI_API_KEY",
    "bedrock": None,  # SigV4 from the AWS credential chain unless a Bedrock API key is named
    "ollama": None,
}


def provider_builders() -> dict[str, Builder]:
    """Name -> builder for the built-in providers (configured from the environment)."""
    return {
        "openai": OpenAIProvider.from_env,
        "anthropic": AnthropicProvider.from_env,
        "ollama": OllamaProvider.from_env,
    }


def _key(name: str, spec: ProviderSpec, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(key, variable)``: the key from the variable the entry names (or its type's default)."""
    variable = spec.api_key_env or DEFAULT_KEY_ENV[spec.type]
    if variable is None:
        return None, None
    key = env.get(variable) or None
    if key is None:
        setting = f"providers.{name}.api_key_env" if spec.api_key_env else f"providers.{name} (type {spec.type})"
        raise ConfigurationError(
            f"{setting}: the variable {variable} is not set in the worker's environment", provider=name
        )
    return key, variable


def build_provider(
    name: str,
    spec: ProviderSpec,
    http: HTTPClient,
    env: Mapping[str, str],
    *,
    aws_loader: AWSLoader = load_aws,
) -> Provider:
    """The provider a ``[providers.<name>]`` entry describes."""
    key, variable = _key(name, spec, env)
    bearer = spec.auth == "bearer"
    headers, timeout_s, base_url = spec.headers, spec.timeout_s, spec.base_url
    if spec.type == "openai":
        return OpenAIProvider(
            http, api_key=key, base_url=base_url, name=name, key_env=variable, headers=headers, timeout_s=timeout_s
        )
    if spec.type == "azure":
        assert base_url is not None  # the spec's validator requires it
        return AzureOpenAIProvider(
            http,
            api_key=key,
            base_url=base_url,
            api_version=spec.api_version,
            bearer=bearer,
            name=name,
            key_env=variable,
            headers=headers,
            timeout_s=timeout_s,
        )
    if spec.type == "gemini":
        return GeminiProvider(
            http,
            api_key=key,
            base_url=base_url,
            bearer=bearer,
            name=name,
            key_env=variable,
            headers=headers,
            timeout_s=timeout_s,
        )
    if spec.type == "bedrock":
        from workers.llm.bedrock import BedrockProvider

        assert spec.region is not None  # the spec's validator requires it
        aws = aws_loader(name)  # without the extra: one line naming the provider and the extra
        credentials = None
        # the chain's order: an entry's own profile first (as botocore: a named profile ignores the
        # environment's keys), then the environment's keys, then the rest of the chain
        if spec.profile is None and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            credentials = aws.static_credentials(
                env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN") or None
            )
        elif key is None:  # the rest of the standard chain (files, SSO, container, instance role), now
            credentials = aws.default_credentials(spec.profile)
            if credentials is None:
                raise ConfigurationError(
                    f"providers.{name} (type bedrock): no AWS credentials found (AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY, a profile, SSO, or an instance role), and no api_key_env",
                    provider=name,
                )
        return BedrockProvider(
            http,
            aws=aws,
            region=spec.region,
            base_url=base_url,
            api_key=key,
            credentials=credentials,
            profile=spec.profile,
            name=name,
            key_env=variable,
            headers=headers,
            timeout_s=timeout_s,
        )
    if spec.type == "anthropic":
        return AnthropicProvider(
            http, api_key=key, base_url=base_url, name=name, key_env=variable, headers=headers, timeout_s=timeout_s
        )
    return OllamaProvider(http, host=base_url, api_key=key, name=name, headers=headers, timeout_s=timeout_s)


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


def build_registry(
    http: HTTPClient,
    env: Mapping[str, str] | None = None,
    specs: Mapping[str, ProviderSpec] | None = None,
    *,
    aws_loader: AWSLoader = load_aws,
) -> ProviderRegistry:
    """The built-ins from ``env`` plus one provider per config entry (an entry may replace a built-in)."""
    env = os.environ if env is None else env
    providers = {name: build(http, env) for name, build in provider_builders().items()}
    for name, spec in (specs or {}).items():
        try:
            providers[name] = build_provider(name, spec, http, env, aws_loader=aws_loader)
        except ConfigurationError:
            raise
        except Exception as exc:  # e.g. botocore's ProfileNotFound: still one line, naming the entry
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ConfigurationError(f"providers.{name} (type {spec.type}): {reason}", provider=name) from exc
    return ProviderRegistry(providers)
