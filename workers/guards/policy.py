"""What the shared guards decide with: which errors count against a model, the limits and breaker
policy a model's config gives, and the typed error a job gets when an open breaker skipped its model.
"""

from __future__ import annotations

import json

from workers.contract import redact, split_model_id
from workers.guards.breaker import BreakerPolicy
from workers.guards.ratelimit import RateLimits
from workers.llm import errors
from workers.llm.errors import (
    ConfigurationError,
    FirstTokenTimeoutError,
    IncompleteStreamError,
    InsufficientQuotaError,
    LLMQError,
    ModelNotFoundError,
    OverloadedError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    ServerError,
)
from workers.routes import LLMQConfig, ModelConfig

__all__ = [
    "breaker_policy_for",
    "check_limits",
    "counts_against_model",
    "describe",
    "rate_limits_for",
    "skip_error",
]

#: Errors that say the model (or its provider) is unhealthy; they count toward its breaker.
#: 429s set the not-before time instead; errors caused by the request itself count for nothing.
_UNHEALTHY: tuple[type[LLMQError], ...] = (
    ServerError,
    OverloadedError,
    ProviderTimeoutError,
    ProviderConnectionError,
    IncompleteStreamError,
    FirstTokenTimeoutError,
    ModelNotFoundError,
    InsufficientQuotaError,
)
_DEFAULT_BREAKER = BreakerPolicy()


def counts_against_model(exc: LLMQError) -> bool:
    return isinstance(exc, _UNHEALTHY)


def _error_types() -> dict[str, type[LLMQError]]:
    found = (getattr(errors, name) for name in errors.__all__)
    return {cls.type_name: cls for cls in found if isinstance(cls, type) and issubclass(cls, LLMQError)}


_ERROR_TYPES = _error_types()


def describe(exc: LLMQError) -> str:
    """What the breaker keeps about the failure that opened it (small JSON)."""
    return json.dumps({"t": exc.type_name, "s": exc.status, "c": exc.code, "m": redact(exc.message or "")[:200]})


def skip_error(model_id: str, why: str) -> LLMQError | None:
    """The typed error a job fails with when an open breaker left it no model to try."""
    try:
        info = json.loads(why)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    cls = _ERROR_TYPES.get(str(info.get("t")), ProviderError)
    provider, model = split_model_id(model_id)
    message = f"not sent: circuit breaker open for {model_id} after repeated {cls.type_name} ({info.get('m') or ''})"
    status, code = info.get("s"), info.get("c")
    return cls(
        message,
        provider=provider,
        model=model,
        status=status if isinstance(status, int) else None,
        code=str(code) if code else None,
    )


def rate_limits_for(mc: ModelConfig, model_id: str = "") -> RateLimits:
    """The RPM/TPM buckets a model's config gives (``[models."<id>"]``: rpm, tpm, bursts, lease).

    Raises :class:`ConfigurationError` naming the model when the limits cannot be met (a burst
    above ``rpm``, no room left for refill).
    """
    lease_s = mc.rate_lease_ms / 1000.0
    try:
        return RateLimits(rpm=mc.rpm, tpm=mc.tpm, rpm_burst=mc.rpm_burst, tpm_burst=mc.tpm_burst, lease_s=lease_s)
    except ValueError as exc:
        where = f'[models."{model_id}"]' if model_id else "model config"
        raise ConfigurationError(f"invalid rate limits in {where}: {exc}") from None


def check_limits(config: LLMQConfig) -> None:
    """Raise :class:`ConfigurationError` for the first configured model whose limits cannot be met
    (run when a worker's guards start, so a bad routes file stops the worker at start-up)."""
    for model_id, mc in config.models.items():
        rate_limits_for(mc, model_id)


def breaker_policy_for(mc: ModelConfig) -> BreakerPolicy:
    base = _DEFAULT_BREAKER
    return BreakerPolicy(
        failures=mc.breaker_failures or base.failures,
        window_s=mc.breaker_window_s or base.window_s,
        cooldown_s=mc.breaker_cooldown_s or base.cooldown_s,
        failure_ratio=base.failure_ratio if mc.breaker_failure_ratio is None else (mc.breaker_failure_ratio or None),
    )
