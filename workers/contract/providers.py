"""Named providers: the ``[providers.<name>]`` entries of the config file, shared by both sides.

A model id is ``<name>:<model>``; ``<name>`` is one of the built-ins (``openai``, ``anthropic``,
``ollama``, configured from the worker's environment as the official SDKs are) or an entry of the
config file (``LLMQ_CONFIG``)::

    [providers.azure-eu]
    type = "azure"
    base_url = "https://my-resource.openai.azure.com"
    api_key_env = "AZURE_EU_API_KEY"      # the NAME of the variable; never a key in the file
    api_version = "2024-10-21"

    [providers.groq]
    type = "openai"                       # an OpenAI-compatible server
    base_url = "https://api.groq.com/openai/v1"
    api_key_env = "GROQ_API_KEY"
    params = ["temperature", "top_p", "stop", "seed", "tools", "tool_choice", "response_format"]

    [providers.claude-aws]
    type = "bedrock"
    region = "us-east-1"                  # credentials: the standard AWS chain

Producers import this module (never the worker's provider code): workers publish what they
configured (:class:`ProviderInfo`, no secrets) under :data:`PROVIDERS_KEY`, and
:func:`parse_provider_infos` reads it back (from ``HGETALL``); a producer sharing the config file can use
:func:`load_provider_specs` instead. The capability table (``capabilities.py``) checks a named
provider by its ``type`` and refuses the parameters its ``params`` list leaves out.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "BUILTIN_ENV",
    "BUILTIN_PROVIDERS",
    "OPTIONAL_PARAMS",
    "PROVIDERS_KEY",
    "PROVIDER_TYPES",
    "SIMULATOR_URL_ENV",
    "ProviderInfo",
    "ProviderSpec",
    "ProviderType",
    "check_provider_names",
    "load_provider_specs",
    "parse_provider_infos",
    "provider_infos",
]

ProviderType = Literal["openai", "azure", "anthropic", "gemini", "bedrock", "ollama"]
PROVIDER_TYPES: tuple[str, ...] = ("openai", "azure", "anthropic", "gemini", "bedrock", "ollama")
#: The names that work without a config entry (from the worker's environment).
BUILTIN_PROVIDERS: dict[str, str] = {"openai": "openai", "anthropic": "anthropic", "ollama": "ollama"}
#: Each built-in's variables, as its official SDK names them: (key, base URL, the path a server
#: root needs after it: OpenAI's API lives under ``/v1``).
BUILTIN_ENV: dict[str, tuple[str, str, str]] = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "/v1"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", ""),
    "ollama": ("OLLAMA_API_KEY", "OLLAMA_HOST", ""),
}
#: A simulator's root URL: every built-in provider without a key or base URL of its own talks to it
#: (``docker-compose.yml``: the real API whenever a key is set, the simulator otherwise).
SIMULATOR_URL_ENV = "LLMQ_SIMULATOR_URL"
#: Redis hash: provider name -> :class:`ProviderInfo` JSON, written by every worker at start.
PROVIDERS_KEY = "llmq:providers"
#: Job fields a ``params`` list may name (the optional request parameters).
OPTIONAL_PARAMS = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning",
    "images",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "n",
)
_NAME = r"^[a-z][a-z0-9_-]*$"


class ProviderSpec(BaseModel):
    """One ``[providers.<name>]`` entry. Unknown keys are errors (a typo fails at start)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ProviderType
    base_url: str | None = None
    #: The environment variable holding the key (its name, never the key).
    api_key_env: str | None = None
    #: Extra headers sent with every request (not secrets: they are shown in logs and `llmq`).
    headers: dict[str, str] = Field(default_factory=dict)
    #: Connect/read timeout of one request, seconds (default: the worker's HTTP settings).
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    #: Azure: the ``api-version`` of deployment URLs; unset or ``"v1"``: the v1 path (``"preview"`` /
    #: ``"latest"``: the v1 path with that ``api-version``).
    api_version: str | None = None
    #: Bedrock: the AWS region (required), and optionally a profile of the shared AWS files.
    region: str | None = None
    profile: str | None = None
    #: Azure/Gemini: send the key as a bearer token (an Entra ID or Google OAuth token).
    auth: Literal["key", "bearer"] = "key"
    #: OpenAI-compatible servers: the optional parameters the server accepts (None: all).
    params: list[str] | None = None

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or not value.replace("_", "").isalnum() or value[0].isdigit()):
            # the value is not echoed: a key pasted here by mistake must not reach a log
            raise ValueError("api_key_env must be the NAME of an environment variable (like GROQ_API_KEY), not a key")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http(s) URL like https://api.groq.com/openai/v1, not {value!r}")
        if url.query or url.fragment:
            # the call's path is appended to base_url: a query here would swallow it
            raise ValueError(
                f"base_url must have no query string ({value!r}); an Azure api-version goes in api_version"
            )
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or ()) - set(OPTIONAL_PARAMS))
        if unknown:
            raise ValueError(f"unknown parameters {unknown} (known: {', '.join(OPTIONAL_PARAMS)})")
        return value

    @model_validator(mode="after")
    def _per_type(self) -> ProviderSpec:
        if self.type == "bedrock" and not self.region:
            raise ValueError("a bedrock provider needs 'region'")
        if self.type == "azure" and not self.base_url:
            raise ValueError("an azure provider needs 'base_url' (https://<resource>.openai.azure.com)")
        if self.type == "azure" and "/openai/deployments" in urlsplit(self.base_url or "").path:
            raise ValueError(
                "an azure base_url is the resource's root (https://<resource>.openai.azure.com): the deployment "
                "is the model part of a model id (<name>:<deployment>) and the version goes in api_version"
            )
        if self.region is not None and self.type != "bedrock":
            raise ValueError("'region' is a bedrock setting")
        if self.profile is not None and self.type != "bedrock":
            raise ValueError("'profile' is a bedrock setting")
        if self.auth != "key" and self.type not in ("azure", "gemini"):
            raise ValueError("'auth' is an azure or gemini setting (the others send their key as they must)")
        if self.api_version is not None and self.type != "azure":
            raise ValueError("'api_version' is an azure setting")
        if self.params is not None and self.type != "openai":
            raise ValueError("'params' lists what an OpenAI-compatible server accepts (type 'openai')")
        return self


class ProviderInfo(BaseModel):
    """What producers see of a configured provider: no key, no headers."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    type: ProviderType
    params: list[str] | None = None


def provider_infos(specs: Mapping[str, ProviderSpec]) -> dict[str, ProviderInfo]:
    """The built-ins and ``specs`` as producers see them (a spec may replace a built-in)."""
    infos = {name: ProviderInfo(name=name, type=kind) for name, kind in BUILTIN_PROVIDERS.items()}  # type: ignore[arg-type]
    for name, spec in specs.items():
        infos[name] = ProviderInfo(name=name, type=spec.type, params=spec.params)
    return infos


def check_provider_names(specs: dict[str, Any]) -> None:
    """Provider names are model-id prefixes: lowercase letters, digits, ``-`` and ``_``."""
    for name in specs:
        if not re.match(_NAME, name):
            raise ValueError(f"provider name {name!r} must match {_NAME} (it prefixes model ids)")


def load_provider_specs(path: str | Path | None) -> dict[str, ProviderSpec]:
    """The ``[providers.*]`` entries of a config file (for a producer sharing the workers' file)."""
    if path is None:
        return {}
    raw = tomllib.loads(Path(path).read_text()).get("providers") or {}
    check_provider_names(raw)
    try:
        return {name: ProviderSpec.model_validate(entry) for name, entry in raw.items()}
    except ValidationError as exc:
        raise ValueError(f"invalid [providers] in {path}: {exc}") from None


def parse_provider_infos(published: Mapping[Any, Any]) -> dict[str, ProviderInfo]:
    """The providers the workers configured, from the hash they publish: read it with
    ``HGETALL`` of :data:`PROVIDERS_KEY` (empty: no worker published yet)."""
    out: dict[str, ProviderInfo] = {}
    for raw in published.values():
        try:
            info = ProviderInfo.model_validate_json(raw)
        except ValidationError:
            continue  # written by a newer worker: skip what this version cannot read
        out[info.name] = info
    return dict(sorted(out.items()))
