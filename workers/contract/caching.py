"""What a job may ask of the response cache: ``cache: {ttl_s, scope, sampled}`` (design: docs/caching.md).

An answer is stored only when the job (or its route in the config) asks for it, and only a clean
one: a succeeded job without a refusal. A job that asks is also *single-flight*: identical ones in
flight at the same time make one upstream call and share its answer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from workers.contract.base import WireModel

__all__ = ["MAX_CACHE_TTL_S", "CacheSpec"]

#: The longest an answer may be kept: 30 days.
MAX_CACHE_TTL_S = 30 * 86_400


class CacheSpec(WireModel):
    #: How long the answer is served from the cache.
    ttl_s: Annotated[int, Field(ge=1, le=MAX_CACHE_TTL_S)] = 3600
    #: ``tenant``: only the job's own tenant sees the entry (the tenant is part of the key);
    #: ``global``: every tenant asking the same request shares it.
    scope: Literal["tenant", "global"] = "tenant"
    #: Also cache (and share) an answer sampled with ``temperature`` > 0 (or ``top_p`` < 1): every
    #: caller then gets that one sample. Without it such a job is neither cached nor shared.
    sampled: bool = False
