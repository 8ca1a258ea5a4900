"""Small test doubles shared by the unit tests: a settable clock and providers pointed at a URL."""

from __future__ import annotations

from workers.llm.anthropic import AnthropicProvider
from workers.llm.aws import load_aws
from workers.llm.azure import AzureOpenAIProvider
from workers.llm.base import Provider
from workers.llm.bedrock import BedrockProvider
from workers.llm.gemini import GeminiProvider
from workers.llm.httpclient import HTTPClient
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

__all__ = ["FakeClock", "provider_for"]


class FakeClock:
    """A clock that stands still until a test moves ``now``."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


#: Signing credentials of the Bedrock doubles (any pair: servers here do not check signatures).
AWS_TEST_KEY_ID, AWS_TEST_SECRET = "AKIDLLMQTEST00000000", "llmq-test-aws-secret-key-0123456789abcdef"


def provider_for(name: str, http: HTTPClient, base: str, *, api_key: str = "sk-test") -> Provider:
    """A provider of type ``name`` (``openai``, ``anthropic``, ``ollama``, ``azure``, ``gemini``,
    ``bedrock``) talking to ``base`` (a server's root URL, e.g. the simulator's)."""
    if name == "openai":
        return OpenAIProvider(http, api_key=api_key, base_url=f"{base}/v1")
    if name == "anthropic":
        return AnthropicProvider(http, api_key=api_key, base_url=base)
    if name == "azure":
        return AzureOpenAIProvider(http, api_key=api_key, base_url=base, api_version="2024-10-21")
    if name == "gemini":
        return GeminiProvider(http, api_key=api_key, base_url=f"{base}/v1beta")
    if name == "bedrock":
        aws = load_aws(name)
        credentials = aws.static_credentials(AWS_TEST_KEY_ID, AWS_TEST_SECRET)
        return BedrockProvider(http, aws=aws, region="us-east-1", base_url=base, credentials=credentials)
    return OllamaProvider(http, host=base)
