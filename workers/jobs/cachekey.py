"""The response cache's key: a hash of the canonical request after alias resolution.

Two jobs share an entry when the model chain they resolve to (route aliases and bare names
expanded), their messages (a published prompt or a template rendered), their tools and every
request parameter are the same, and, unless the scope is ``global``, their tenant too. Fields that
cannot change the answer are left out: the job's id, its routing, scheduling and delivery
(``stream``, ``reply_to``, ``deadline_s``, trace context, ``priority``, ``concurrency_key``, ``batch``,
``webhook``, ``replay_of``), its bookkeeping (``metadata``, ``tags``, ``user``), the provider's prompt
cache hints (``prompt_cache``, ``prompt_cache_key``, ``cache_control`` on messages, parts and tools:
they change the price, not the answer) and the cache options. ``logit_bias`` is keyed by token in
order (a mapping's order is not part of the request). Anything else the job carries is part of the key, so a parameter added to the
contract later splits entries rather than wrongly sharing them.

Whether a job may be cached at all (:func:`cache_spec`): it asked (``cache``), or its route has a
``[cache.routes]`` entry; and it is not sampled (``temperature`` > 0 or ``top_p`` < 1) unless it says
``sampled: true``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from workers.contract import CacheSpec, CompletionJob, Message, Tool
from workers.routes import LLMQConfig

__all__ = ["CacheKey", "cache_key", "cache_spec"]

#: Bumped when the canonical form changes (old entries then simply miss).
KEY_VERSION = "v2"
#: Job fields that never change the answer (everything else is part of the key).
_NOT_IN_KEY = frozenset(
    {
        "schema_version", "id", "model", "fallbacks", "messages", "template", "variables", "prompt",
        "tools", "stream", "tenant", "metadata", "tags", "user", "deadline_s", "submitted_at",
        "reply_to", "traceparent", "tracestate", "cache", "priority", "concurrency_key", "batch", "webhook",
        "replay_of", "prompt_cache", "prompt_cache_key", "logit_bias",
    }
)  # fmt: skip


_EXCLUDED = set(_NOT_IN_KEY)  # what pydantic's exclude takes, built once

_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])
_TOOLS: TypeAdapter[list[Tool | str]] = TypeAdapter(list[Tool | str])
#: Prompt-cache breakpoints change what a call costs, not its answer: not part of the key.
_MESSAGES_EXCLUDED: Any = {"__all__": {"cache_control": True, "content": {"__all__": {"cache_control"}}}}
_TOOLS_EXCLUDED: Any = {"__all__": {"cache_control"}}


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where a job's answer lives: ``member`` names the entry (``t:<tenant>:<hash>`` or ``g:<hash>``)."""

    digest: str
    member: str
    spec: CacheSpec

    @property
    def tenant(self) -> str | None:
        return self.member.split(":", 2)[1] if self.member.startswith("t:") else None


def cache_spec(job: CompletionJob, config: LLMQConfig) -> CacheSpec | None:
    """The cache options that apply to ``job`` (its own, else its route's), or None: not cached."""
    spec = job.cache or config.cache.routes.get(job.model)
    if spec is None:
        return None
    sampled = (job.temperature is not None and job.temperature > 0) or (job.top_p is not None and job.top_p < 1)
    if sampled and not spec.sampled:
        return None
    return spec


def cache_key(job: CompletionJob, spec: CacheSpec, chain: Sequence[str], messages: Sequence[Message]) -> CacheKey:
    """The key of ``job`` once its chain is resolved and its messages rendered (pydantic's JSON
    encoder, in field order: a cheap canonical form; each part is length-prefixed)."""
    digest = hashlib.sha256(KEY_VERSION.encode())
    parts = [
        json.dumps(list(chain)).encode(),
        job.tenant.encode() if spec.scope == "tenant" else b"",
        _MESSAGES.dump_json(list(messages), exclude_none=True, exclude=_MESSAGES_EXCLUDED),
        _TOOLS.dump_json(job.tools, exclude_none=True, exclude=_TOOLS_EXCLUDED),
        job.model_dump_json(exclude=_EXCLUDED, exclude_none=True).encode(),
        json.dumps(sorted(job.logit_bias.items())).encode() if job.logit_bias else b"",
    ]
    for part in parts:
        digest.update(b"%d:" % len(part))
        digest.update(part)
    hexdigest = digest.hexdigest()
    member = f"t:{job.tenant}:{hexdigest}" if spec.scope == "tenant" else f"g:{hexdigest}"
    return CacheKey(hexdigest, member, spec)
