"""``[providers.<name>]`` entries: what they build, and one clear line for each thing wrong with them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.replay_server import local_client
from workers.contract.providers import ProviderSpec, load_provider_specs, provider_infos
from workers.llm.aws import load_aws
from workers.llm.azure import AzureOpenAIProvider
from workers.llm.bedrock import BedrockProvider
from workers.llm.errors import ConfigurationError
from workers.llm.gemini import GeminiProvider
from workers.llm.httpclient import HTTPClient
from workers.llm.openai import OpenAIProvider
from workers.llm.registry import build_registry
from workers.routes import load_config

CONFIG = """
[providers.azure-eu]
type = "azure"
base_url = "https://example-eu.openai.azure.com"
api_key_env = "AZURE_EU_KEY"
api_version = "2024-10-21"
headers = { "x-team" = "search" }
timeout_s = 30

[providers.groq]
type = "openai"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "GROQ_API_KEY"
params = ["temperature", "tools", "tool_choice"]

[providers.gemini]
type = "gemini"

[providers.claude-aws]
type = "bedrock"
region = "eu-west-3"

[routes]
default = ["azure-eu:gpt-4o", "openai:gpt-4o", "groq:llama-3.3-70b-versatile"]
"""
ENV = {
    "AZURE_EU_KEY": "az-key-123456",
    "GROQ_API_KEY": "gsk-123456",
    "GEMINI_API_KEY": "gm-key-123456",
    # Bedrock signs with these; without them the worker would resolve the rest of the AWS chain
    "AWS_ACCESS_KEY_ID": "AKIDLLMQTEST00000000",
    "AWS_SECRET_ACCESS_KEY": "llmq-test-secret",
}


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    with local_client() as client:
        yield client


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llmq.toml"
    path.write_text(text)
    return path


def test_entries_build_providers_of_their_type_named_as_configured(tmp_path: Path, http: HTTPClient) -> None:
    config = load_config(_config(tmp_path, CONFIG))
    registry = build_registry(http, ENV, config.providers)
    assert registry.names() == ["anthropic", "azure-eu", "claude-aws", "gemini", "groq", "ollama", "openai"]
    azure, groq = registry.get("azure-eu"), registry.get("groq")
    assert isinstance(azure, AzureOpenAIProvider) and azure.name == "azure-eu"
    assert isinstance(groq, OpenAIProvider) and groq.name == "groq" and groq.key_env == "GROQ_API_KEY"
    assert isinstance(registry.get("gemini"), GeminiProvider) and registry.get("gemini").key_env == "GEMINI_API_KEY"
    assert isinstance(registry.get("claude-aws"), BedrockProvider)
    # what producers see: names and types, the accepted parameters, never a key or a header
    infos = provider_infos(config.providers)
    assert infos["groq"].type == "openai" and infos["groq"].params == ["temperature", "tools", "tool_choice"]
    assert infos["azure-eu"].type == "azure" and infos["openai"].type == "openai"
    assert "az-key" not in repr(infos) and "x-team" not in repr(infos)
    assert load_provider_specs(tmp_path / "llmq.toml") == config.providers


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_an_unknown_provider_type_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(_config(tmp_path, '[providers.mine]\ntype = "watsonx"\nbase_url = "https://x"\n'))
    line = _one_line(info.value)
    assert "providers.mine.type" in line and "'gemini'" in line


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ('[providers.x]\ntype = "bedrock"\n', ["providers.x", "region"]),
        ('[providers.x]\ntype = "azure"\napi_key_env = "K"\n', ["providers.x", "base_url"]),
        (
            '[providers.x]\ntype = "openai"\napi_key = "sk-secret"\n',
            ["providers.x.api_key", "unknown key (did you mean 'api_key_env'?)"],
        ),
        ('[providers.x]\ntype = "openai"\napi_key_env = "sk-1234 5678"\n', ["providers.x.api_key_env"]),
        (
            '[providers.x]\ntype = "openai"\nparams = ["temperature", "best_of"]\n',
            ["providers.x.params", "best_of"],
        ),
        ('[providers.X]\ntype = "openai"\n', ["'X'"]),
        # a base URL without its scheme would be a connection error (retried) on every job
        ('[providers.x]\ntype = "openai"\nbase_url = "api.groq.com/openai/v1"\n', ["providers.x.base_url", "http(s)"]),
        (  # the portal's "target URI" of a deployment, pasted whole
            '[providers.x]\ntype = "azure"\nbase_url = '
            '"https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"\n',
            ["providers.x.base_url", "no query string", "api_version"],
        ),
        (
            '[providers.x]\ntype = "azure"\nbase_url = "https://r.openai.azure.com/openai/deployments/gpt-4o"\n',
            ["providers.x", "resource's root", "<name>:<deployment>"],
        ),
    ],
)
def test_a_malformed_entry_is_one_line_naming_it(tmp_path: Path, entry: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(_config(tmp_path, entry))
    line = _one_line(info.value)
    assert all(w in line for w in words), line
    assert "sk-secret" not in line and "sk-1234" not in line  # a key put in the file is not echoed


def test_a_missing_key_variable_names_the_setting_and_the_variable(tmp_path: Path, http: HTTPClient) -> None:
    config = load_config(_config(tmp_path, CONFIG))
    env = {k: v for k, v in ENV.items() if k != "AZURE_EU_KEY"}
    with pytest.raises(ConfigurationError) as info:
        build_registry(http, env, config.providers)
    line = _one_line(info.value)
    assert "providers.azure-eu.api_key_env" in line and "AZURE_EU_KEY" in line
    # a type's default variable is named too when the entry names none
    with pytest.raises(ConfigurationError) as info:
        build_registry(http, {k: v for k, v in ENV.items() if k != "GEMINI_API_KEY"}, config.providers)
    assert "providers.gemini" in _one_line(info.value) and "GEMINI_API_KEY" in str(info.value)


def _without_botocore(name: str) -> ModuleType:
    """The import a machine without the ``bedrock`` extra would see."""
    if name.startswith("botocore"):
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")
    return __import__(name)


def test_bedrock_without_the_aws_extra_is_refused_in_one_line(tmp_path: Path, http: HTTPClient) -> None:
    config = load_config(_config(tmp_path, CONFIG))
    with pytest.raises(ConfigurationError) as info:
        build_registry(http, ENV, config.providers, aws_loader=lambda name: load_aws(name, importer=_without_botocore))
    line = _one_line(info.value)
    assert "claude-aws" in line and "bedrock" in line and "llmqueue[bedrock]" in line
    # without a Bedrock entry the extra is not needed
    others = {name: spec for name, spec in config.providers.items() if spec.type != "bedrock"}
    build_registry(http, ENV, others, aws_loader=lambda name: load_aws(name, importer=_without_botocore))


def test_a_spec_validates_its_per_type_settings() -> None:
    with pytest.raises(ValueError, match="region"):
        ProviderSpec(type="gemini", region="us-east-1")
    with pytest.raises(ValueError, match="api_version"):
        ProviderSpec(type="openai", api_version="2024-10-21")
    with pytest.raises(ValueError, match="'profile' is a bedrock setting"):
        ProviderSpec(type="anthropic", profile="team")
    with pytest.raises(ValueError, match="'auth' is an azure or gemini setting"):
        ProviderSpec(type="bedrock", region="us-east-1", auth="bearer")
    assert ProviderSpec(type="azure", base_url="https://x.openai.azure.com").api_version is None  # the v1 path


def test_the_worker_refuses_to_start_with_a_missing_key_variable_in_one_line(tmp_path: Path, redis_url: str) -> None:
    """The start path (Celery's ``worker_init``): the worker exits before taking jobs, one line."""
    path = _config(tmp_path, CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "AZURE_", "GROQ_", "GEMINI_"))}
    env |= {k: v for k, v in ENV.items() if k != "AZURE_EU_KEY"}
    env |= {"LLMQ_REDIS_URL": redis_url, "LLMQ_CONFIG": str(path)}
    out = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "worker", "--pool", "threads", "--concurrency", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    refusal = [line for line in out.stderr.splitlines() if "llmq worker cannot start" in line]
    assert len(refusal) == 1, out.stderr[-3000:]
    assert "providers.azure-eu.api_key_env" in refusal[0] and "AZURE_EU_KEY" in refusal[0]


def test_spans_and_metrics_name_the_provider_as_the_conventions_do(tmp_path: Path, http: HTTPClient) -> None:
    """``gen_ai.provider.name`` is the provider's (``azure.ai.openai``...), not the configured name."""
    from workers.jobs.chain import build_chain
    from workers.llm.instrumented import InstrumentedModel
    from workers.llm.model import RunContext

    config = load_config(_config(tmp_path, CONFIG))
    registry = build_registry(http, ENV, config.providers)
    chain = [
        "azure-eu:gpt-4o",
        "groq:llama-3.3-70b-versatile",
        "gemini:gemini-2.5-flash",
        "claude-aws:m",
        "openai:gpt-4o",
    ]
    fallback = build_chain(chain, registry, config, RunContext())
    names = []
    for retrying in fallback.models:  # type: ignore[attr-defined]
        model = retrying.wrapped
        assert isinstance(model, InstrumentedModel)
        names.append(model.provider)
    assert names == ["azure.ai.openai", "groq", "gcp.gemini", "aws.bedrock", "openai"]


def test_timeout_s_bounds_the_reads_of_that_provider_only() -> None:
    """A silent upstream: the entry's ``timeout_s`` ends the call (the worker's read timeout, a
    minute here, would have waited for the server to give up on its own: a cut body, not a timeout)."""
    from tests.support.replay_server import ReplayServer, Reply
    from workers.contract import Message, RequestParams
    from workers.llm.base import ChatRequest
    from workers.llm.errors import ProviderTimeoutError

    head = b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    request = ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=8))
    with ReplayServer() as server, local_client(read_timeout=60.0) as client:
        base = server.add("silent", Reply(200, [("Content-Type", "text/event-stream")], head, stall=True))
        quick = OpenAIProvider(client, api_key="k", base_url=base, name="quick", timeout_s=0.5)
        with pytest.raises(ProviderTimeoutError), quick.stream("m", request) as stream:
            list(stream)
        assert stream.text == "hi"
        with pytest.raises(ProviderTimeoutError):
            quick.complete("m", request)


@pytest.fixture
def aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Shared AWS files with one profile, ``team`` (the chain reads them from the process's environment)."""
    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[team]\naws_access_key_id = AKIDTEAMPROFILE00000\naws_secret_access_key = team-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    return credentials


def test_a_bedrock_entrys_profile_wins_over_the_environments_keys(aws_files: Path, http: HTTPClient) -> None:
    """As botocore: a profile named explicitly is used even when AWS_ACCESS_KEY_ID is set."""
    spec = ProviderSpec(type="bedrock", region="eu-west-3", profile="team")
    registry = build_registry(http, ENV, {"claude-aws": spec}, aws_loader=load_aws)
    provider = registry.get("claude-aws")
    assert isinstance(provider, BedrockProvider)
    assert provider.credentials().get_frozen_credentials().access_key == "AKIDTEAMPROFILE00000"
    # without a profile, the environment's keys come first in the chain
    plain = build_registry(http, ENV, {"claude-aws": ProviderSpec(type="bedrock", region="eu-west-3")})
    provider = plain.get("claude-aws")
    assert isinstance(provider, BedrockProvider)
    assert provider.credentials().get_frozen_credentials().access_key == ENV["AWS_ACCESS_KEY_ID"]


def test_a_bedrock_profile_that_does_not_exist_is_one_line_naming_the_entry(aws_files: Path, http: HTTPClient) -> None:
    spec = ProviderSpec(type="bedrock", region="eu-west-3", profile="nonexistent")
    with pytest.raises(ConfigurationError) as info:
        build_registry(http, ENV, {"claude-aws": spec})
    line = _one_line(info.value)
    assert line.startswith("providers.claude-aws (type bedrock): ProfileNotFound") and "nonexistent" in line, line
