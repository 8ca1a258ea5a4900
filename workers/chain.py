"""The one factory that composes a job's model chain.

``Fallback( Retry(Provider model 1), Retry(Provider model 2), ... )``, every layer a
:class:`~workers.llm.model.ChatModel` wrapper, built per job from process-wide parts (providers,
config). Route aliases are resolved here; an unknown provider or alias is a configuration error
that fails the job before any request is made.
"""

from __future__ import annotations

from collections.abc import Callable

from workers.config import LLMQConfig
from workers.contract import CompletionJob, split_model_id
from workers.llm.errors import ConfigurationError
from workers.llm.fallback import FallbackModel, SkipCheck
from workers.llm.model import ChatModel, ProviderModel, RunContext
from workers.llm.registry import ProviderRegistry
from workers.llm.retry import RetryingModel, RetryPolicy

__all__ = ["build_chain", "resolve_chain", "retry_policy_for"]


def resolve_chain(job: CompletionJob, config: LLMQConfig, default_model: str) -> list[str]:
    """The job's ``provider:model`` ids in order, aliases expanded, duplicates dropped."""
    chain: list[str] = []
    for ref in job.chain:
        if ":" in ref:
            expanded = [ref]
        elif ref in config.routes:
            expanded = config.routes[ref]
        elif ref == "default":
            expanded = [default_model]
        else:
            known = ", ".join(sorted({*config.routes, "default"}))
            raise ConfigurationError(f"unknown route alias {ref!r} (known: {known})")
        for model_id in expanded:
            if model_id not in chain:
                chain.append(model_id)
    return chain


def retry_policy_for(model_id: str, config: LLMQConfig) -> RetryPolicy:
    mc = config.model(model_id)
    base = RetryPolicy()
    return RetryPolicy(
        max_retries=base.max_retries if mc.max_retries is None else mc.max_retries,
        initial_backoff_s=mc.initial_backoff_s or base.initial_backoff_s,
        max_backoff_s=mc.max_backoff_s or base.max_backoff_s,
    )


def build_chain(
    chain: list[str],
    registry: ProviderRegistry,
    config: LLMQConfig,
    ctx: RunContext,
    *,
    skip: SkipCheck | None = None,
    meter: Callable[[ChatModel], ChatModel] | None = None,
) -> ChatModel:
    """``Fallback( Retry( meter( Provider model ))) ...``.

    ``meter`` wraps each model inside its retry loop, so every attempt is pre-counted, gated on
    the context window and reserved against the budget before its HTTP request.
    """
    models: list[ChatModel] = []
    for model_id in chain:
        provider_name, native = split_model_id(model_id)
        provider = registry.get(provider_name)
        model: ChatModel = ProviderModel(provider, model_id, native)
        if meter is not None:
            model = meter(model)
        models.append(RetryingModel(model, retry_policy_for(model_id, config), ctx))
    return FallbackModel(models, ctx, skip=skip)
