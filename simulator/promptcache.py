"""The provider side of prompt caching, by each provider's rules: which prefix a request reads from
the cache, and which it writes.

**Anthropic** (``cache_control`` breakpoints): the prompt is read in cache order, tools, then
system, then messages, block by block. A request reads the longest prefix that was written before
and has not expired, found at a breakpoint or at any of the 20 block boundaries before one (the
API's lookback). It writes, at each breakpoint whose prefix holds at least the model's minimum
(1,024 tokens; 2,048 for Haiku models), what lies between the longest prefix read (or the previous
breakpoint) and that breakpoint, with the breakpoint's TTL (``5m`` default, or ``1h``). A read
refreshes the entry's TTL at no cost.

**Bedrock** (``cachePoint`` blocks, Claude models): Anthropic's rules, a ``cachePoint`` marking the
block before it as a breakpoint (``simulator/protocols/bedrock.py``; usage with ``cacheDetails``).

**OpenAI** (automatic, no markers): a prompt of at least 1,024 tokens reads the longest prefix
seen before, in 128-token steps past the first 1,024; every such prompt's prefixes are kept 5
minutes. OpenAI bills no writes.

Entries are kept in memory per model (without its ``~fault`` suffix), with the time they expire.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from simulator.protocols.base import content_text
from simulator.script import estimate_tokens

__all__ = [
    "CacheBlock",
    "CacheUse",
    "PromptCache",
    "anthropic_blocks",
    "blocks_of",
    "breakpoint_problem",
    "openai_blocks",
]

LOOKBACK = 20
ANTHROPIC_TTL_S = {"5m": 300.0, "1h": 3600.0}
OPENAI_TTL_S = 300.0
OPENAI_MIN, OPENAI_STEP = 1024, 128
MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class CacheBlock:
    """A block boundary: the prefix up to and including the block (its digest and tokens), and
    the block's breakpoint TTL in seconds (None: not a breakpoint)."""

    digest: str
    tokens: int
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class CacheUse:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0


def blocks_of(items: Iterable[tuple[object, int, float | None]]) -> list[CacheBlock]:
    """Boundaries of a prompt given as ``(block, tokens, breakpoint ttl)`` in cache order."""
    out: list[CacheBlock] = []
    running = hashlib.sha256()
    total = 0
    for block, tokens, ttl in items:
        running.update(json.dumps(block, sort_keys=True, default=str).encode())
        total += tokens
        out.append(CacheBlock(running.copy().hexdigest(), total, ttl))
    return out


def breakpoint_problem(blocks: list[CacheBlock]) -> str | None:
    """Why Anthropic would refuse these breakpoints (more than four, or a 1-hour one after a
    5-minute one in cache order), else None."""
    ttls = [b.ttl_s for b in blocks if b.ttl_s is not None]
    if len(ttls) > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {len(ttls)}."
    if any(later > earlier for earlier, later in pairwise(ttls)):
        return "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
    return None


class PromptCache:
    """What a provider's prompt cache holds, shared by every request to the simulator."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _live(self, model: str, digest: str, now: float) -> bool:
        expiry = self._entries.get((model, digest))
        return expiry is not None and expiry > now

    def _keep(self, model: str, digest: str, until: float) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v > now}
        key = (model, digest)
        self._entries[key] = max(until, self._entries.get(key, 0.0))

    def anthropic(self, model: str, blocks: list[CacheBlock], minimum: int) -> CacheUse:
        points = [i for i, b in enumerate(blocks) if b.ttl_s is not None]
        if not points:
            return CacheUse()
        with self._lock:
            now = self._clock()
            read, read_at = 0, -1
            for point in points:
                for j in range(point, max(-1, point - LOOKBACK), -1):
                    if self._live(model, blocks[j].digest, now):
                        if blocks[j].tokens > read:
                            read, read_at = blocks[j].tokens, j
                        break
            if read_at >= 0:  # a read refreshes the entry
                ttl = self._entries[(model, blocks[read_at].digest)] - now
                self._keep(model, blocks[read_at].digest, now + max(ttl, ANTHROPIC_TTL_S["5m"]))
            written = {300.0: 0, 3600.0: 0}
            start = read
            for point in points:
                block = blocks[point]
                if block.tokens < minimum or block.tokens <= start:
                    continue
                ttl_s = block.ttl_s or ANTHROPIC_TTL_S["5m"]
                written[3600.0 if ttl_s > 300 else 300.0] += block.tokens - start
                start = block.tokens
                self._keep(model, block.digest, now + ttl_s)
        return CacheUse(read, written[300.0], written[3600.0])

    def openai(self, model: str, blocks: list[CacheBlock]) -> CacheUse:
        if not blocks or blocks[-1].tokens < OPENAI_MIN:
            return CacheUse()
        with self._lock:
            now = self._clock()
            seen = max(
                (b.tokens for b in blocks if b.tokens >= OPENAI_MIN and self._live(model, b.digest, now)), default=0
            )
            for b in blocks:
                if b.tokens >= OPENAI_MIN:
                    self._keep(model, b.digest, now + OPENAI_TTL_S)
        if not seen:
            return CacheUse()
        return CacheUse(read=OPENAI_MIN + (seen - OPENAI_MIN) // OPENAI_STEP * OPENAI_STEP)


def _strip(block: object) -> object:
    """A block as the cache sees it: its breakpoint is not part of its identity."""
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _ttl(block: object) -> float | None:
    mark = block.get("cache_control") if isinstance(block, dict) else None
    if not isinstance(mark, dict):
        return None
    return ANTHROPIC_TTL_S.get(str(mark.get("ttl", "5m")), ANTHROPIC_TTL_S["5m"])


def _text_tokens(block: object) -> int:
    return estimate_tokens(content_text([block] if isinstance(block, dict) else block))


def anthropic_blocks(payload: dict[str, Any]) -> list[CacheBlock]:
    """A Messages request's boundaries in cache order: tools, system, then each message's blocks
    (a message costs 3 tokens besides its text, as the simulator counts prompts)."""
    items: list[tuple[object, int, float | None]] = []
    for tool in payload.get("tools") or []:
        items.append((_strip(tool), 0, _ttl(tool)))
    system = payload.get("system")
    if isinstance(system, str) and system:
        items.append((system, estimate_tokens(system), None))
    elif isinstance(system, list):
        items += [(_strip(b), _text_tokens(b), _ttl(b)) for b in system]
    for message in payload.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        for i, block in enumerate(blocks):
            items.append(
                ((message.get("role"), _strip(block)), _text_tokens(block) + (3 if i == 0 else 0), _ttl(block))
            )
    return blocks_of(items)


def openai_blocks(payload: dict[str, Any]) -> list[CacheBlock]:
    """A Chat Completions request's boundaries: tools, then each message."""
    items: list[tuple[object, int, float | None]] = [(t, 0, None) for t in payload.get("tools") or []]
    for message in payload.get("messages") or []:
        if isinstance(message, dict):
            items.append((message, estimate_tokens(content_text(message.get("content"))) + 3, None))
    return blocks_of(items)
