"""Which providers have a batch API: OpenAI (not Azure, whose batches are deployments of their own)
and Anthropic. The one place a provider object is matched to its :class:`~workers.llm.batchapi.BatchAPI`."""

from __future__ import annotations

from workers.llm.anthropic import AnthropicProvider
from workers.llm.anthropic_batch import AnthropicBatchAPI
from workers.llm.azure import AzureOpenAIProvider
from workers.llm.base import Provider
from workers.llm.batchapi import BatchAPI
from workers.llm.openai import OpenAIProvider
from workers.llm.openai_batch import OpenAIBatchAPI

__all__ = ["batch_api"]


def batch_api(provider: Provider) -> BatchAPI | None:
    """``provider``'s batch API over its own HTTP client, or None when it has none."""
    if isinstance(provider, AzureOpenAIProvider):
        return None
    if isinstance(provider, OpenAIProvider):
        return OpenAIBatchAPI(provider, provider.http)
    if isinstance(provider, AnthropicProvider):
        return AnthropicBatchAPI(provider, provider.http)
    return None
