"""The one factory that composes a job's model chain.

``Fallback( Retry( [Metered]( [Guarded]( Instrumented( Provider model 1 )))), Retry( ... model 2 ), ... )``:
every layer a :class:`~workers.llm.model.ChatModel` wrapper, built per job from process-wide
parts (providers, config, shared guards). Both the meter and the guard sit inside the retry loop,
so every attempt is pre-counted and reserved, then admitted by the shared limits and breaker, and
its outcome reported back. Route aliases and bare names are resolved here (the contract's rule);
an unknown provider, alias or name is a configuration error that fails the job before any request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry.util.types import AttributeValue

from workers.contract import CompletionJob, split_model_id
from workers.contract.catalog import ModelCatalog, UnknownModelError
from workers.guards.model import GuardedModel
from workers.llm.errors import ConfigurationError
from workers.llm.fallback import FallbackModel, SkipCheck
from workers.llm.instrumented import InstrumentedModel, PriceFn
from workers.llm.model import ChatModel, ProviderModel, RunContext
from workers.llm.registry import ProviderRegistry
from workers.llm.retry import RetryingModel, RetryPolicy
from workers.llm.watchdog import Watchdog
from workers.routes import LLMQConfig

if TYPE_CHECKING:
    from workers.guards.shared import SharedGuards

__all__ = ["Instrumentation", "build_chain", "resolve_chain", "retry_policy_for"]


def resolve_chain(job: CompletionJob, catalog: ModelCatalog) -> list[str]:
    """The job's ``provider:model`` ids in order (aliases and bare names resolved by the contract's one
    rule, :meth:`ModelCatalog.resolve`), duplicates dropped; an unknown name is a ConfigurationError."""
    chain: list[str] = []
    for ref in job.chain:
        try:
            expanded = catalog.resolve(ref)
        except UnknownModelError as exc:
            raise ConfigurationError(str(exc), code=exc.code) from None
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


@dataclass(frozen=True, slots=True)
class Instrumentation:
    """What the per-attempt spans carry besides the request: cost, job attributes, content."""

    price: PriceFn | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    record_content: bool = False


def build_chain(
    chain: list[str],
    registry: ProviderRegistry,
    config: LLMQConfig,
    ctx: RunContext,
    *,
    skip: SkipCheck | None = None,
    meter: Callable[[ChatModel], ChatModel] | None = None,
    guards: SharedGuards | None = None,
    watchdog: Watchdog | None = None,
    instrument: Instrumentation | None = None,
) -> ChatModel:
    """``Fallback( Retry( meter( Guarded( Provider model ))))`` ...

    ``meter`` wraps each model inside its retry loop, so every attempt is pre-counted, gated on
    the context window and reserved against the budget before its HTTP request. ``guards`` (the
    process's :class:`~workers.guards.shared.SharedGuards`; None = no shared state) adds the breaker,
    the not-before time and the RPM/TPM buckets inside the meter, where the pre-count is known.
    A model with a ``ttft_limit_s`` is guarded even without shared state (``watchdog`` times it;
    default: the guards' or the process's own).
    Innermost, :class:`~workers.llm.instrumented.InstrumentedModel` makes each HTTP attempt a
    ``chat {model}`` span and reports it to ``ctx.hooks`` (``instrument`` adds cost, span
    attributes such as the job id, and opt-in content).
    """
    instrument = instrument or Instrumentation()
    models: list[ChatModel] = []
    for model_id in chain:
        provider_name, native = split_model_id(model_id)
        provider = registry.get(provider_name)
        model: ChatModel = InstrumentedModel(
            ProviderModel(provider, model_id, native),
            ctx,
            fallback_index=len(models),
            price=instrument.price,
            server_url=provider.server_url,
            provider_name=provider.genai_name,
            attributes=instrument.attributes,
            record_content=instrument.record_content,
        )
        ttft = config.model(model_id).ttft_limit_s
        if guards is not None or ttft:
            model = GuardedModel(
                model,
                ctx,
                guard=guards.for_model(model_id) if guards is not None else None,
                ttft_limit_s=ttft,
                watchdog=watchdog or (guards.watchdog if guards is not None else None),
            )
        if meter is not None:
            model = meter(model)
        models.append(RetryingModel(model, retry_policy_for(model_id, config), ctx))
    held = (lambda m: guards.held_for(m.model_id)) if guards is not None else None
    return FallbackModel(models, ctx, skip=skip, held=held)
