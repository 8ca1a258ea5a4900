"""The named providers the workers configured, as producers see them: checked at submit.

Workers publish their ``[providers.<name>]`` entries (name, type, accepted parameters; never a
key) at start (``workers/contract/providers.py``, ``PROVIDERS_KEY``). A job whose chain names such
a provider is checked against the capability table of its type and the parameters it accepts
before it is enqueued (route aliases and bare names resolved by the workers' catalog,
``LiveCatalog.chain``), so a parameter an OpenAI-compatible server does not take is refused here,
naming the provider and the field. Jobs on the built-in providers cost no look-up; the list is
cached for :data:`CACHE_S` seconds. Before any worker published (or for a name none published),
the worker checks the job instead when it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis

from workers.contract import CompletionJob
from workers.contract.capabilities import CapabilityError
from workers.contract.providers import BUILTIN_PROVIDERS, PROVIDERS_KEY, ProviderInfo, parse_provider_infos

__all__ = ["CACHE_S", "LiveProviders", "capability_error"]

CACHE_S = 5.0


def _named(model_ids: list[str]) -> set[str]:
    return {m.partition(":")[0] for m in model_ids if ":" in m} - set(BUILTIN_PROVIDERS)


def capability_error(job: CompletionJob, error: CapabilityError) -> tuple[str, list[dict[str, Any]]]:
    """The message and per-field errors of an ``InvalidJobError`` for a refused parameter."""
    entry = {"type": "unsupported_parameter", "loc": (error.field,), "msg": str(error), "input": error.provider}
    return f"invalid job: {error}", [entry]


class LiveProviders:
    """A producer's cached view of the providers the workers published."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._infos: dict[str, ProviderInfo] = {}
        self._at = -1e18

    def _stale(self, names: set[str]) -> bool:
        return self._clock() - self._at >= CACHE_S or not names <= set(self._infos)

    def _first(self, job: CompletionJob, model_ids: list[str]) -> CapabilityError | None:
        for model_id in model_ids:
            if ":" in model_id:
                found = job.capability_problems(model_id, self._infos)
                if found:
                    return found[0]
        return None

    def check(
        self, client: redis.Redis, job: CompletionJob, model_ids: list[str] | None = None
    ) -> CapabilityError | None:
        """The first parameter a named provider of ``job`` cannot take, or None. ``model_ids``: the
        job's chain with route aliases and bare names resolved (default: its names as written)."""
        model_ids = job.chain if model_ids is None else model_ids
        names = _named(model_ids)
        if not names:
            return None
        if self._stale(names):
            self._infos, self._at = parse_provider_infos(client.hgetall(PROVIDERS_KEY)), self._clock()
        return self._first(job, model_ids)

    async def check_async(
        self, client: aredis.Redis, job: CompletionJob, model_ids: list[str] | None = None
    ) -> CapabilityError | None:
        model_ids = job.chain if model_ids is None else model_ids
        names = _named(model_ids)
        if not names:
            return None
        if self._stale(names):
            self._infos, self._at = parse_provider_infos(await client.hgetall(PROVIDERS_KEY)), self._clock()
        return self._first(job, model_ids)
