"""The simulator's prompt cache rules (simulator/promptcache.py), with a settable clock."""

from __future__ import annotations

from simulator.promptcache import CacheUse, PromptCache, anthropic_blocks, openai_blocks

BIG = "x" * 8000  # 2,000 tokens as the simulator counts


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _anthropic(*messages: dict[str, object], system: object = None) -> dict[str, object]:
    return {"system": system, "messages": list(messages)}


def test_anthropic_writes_at_breakpoints_reads_back_with_lookback_and_expires() -> None:
    clock = Clock()
    cache = PromptCache(clock)
    system = [{"type": "text", "text": BIG, "cache_control": {"type": "ephemeral"}}]
    first = anthropic_blocks(_anthropic({"role": "user", "content": "hi"}, system=system))
    assert cache.anthropic("claude", first, 1024) == CacheUse(read=0, write_5m=2000)
    # the next turn's breakpoint is on a later block; the system prefix is found 2 blocks back
    turn = {"role": "user", "content": [{"type": "text", "text": "more", "cache_control": {"type": "ephemeral"}}]}
    later = anthropic_blocks(
        _anthropic({"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}, turn, system=system)
    )
    use = cache.anthropic("claude", later, 1024)
    assert use.read == 2000 and use.write_5m == later[-1].tokens - 2000
    clock.now += 299  # reads refresh the TTL: still there 299 s after the last read
    assert cache.anthropic("claude", first, 1024).read == 2000
    clock.now += 301
    assert cache.anthropic("claude", first, 1024).read == 0  # expired: written again
    assert cache.anthropic("other-model", first, 1024).read == 0
    small = anthropic_blocks(
        _anthropic({"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {}}]})
    )
    assert cache.anthropic("claude", small, 1024) == CacheUse()  # under the minimum: not cached
    hour = anthropic_blocks(
        _anthropic(
            {"role": "user", "content": "q"},
            system=[{"type": "text", "text": "y" * 8000, "cache_control": {"ttl": "1h"}}],
        )
    )
    assert cache.anthropic("claude-haiku", hour, 2048) == CacheUse()  # 2,000 < Haiku's 2,048
    assert cache.anthropic("claude", hour, 1024) == CacheUse(write_1h=2000)


def test_openai_reads_seen_prefixes_in_128_token_steps_past_1024() -> None:
    cache = PromptCache(Clock())
    body = {"messages": [{"role": "system", "content": BIG}, {"role": "user", "content": "one"}]}
    assert cache.openai("gpt", openai_blocks(body)) == CacheUse()
    body["messages"][1] = {"role": "user", "content": "two"}
    use = cache.openai("gpt", openai_blocks(body))
    assert use.read == 1024 + (2003 - 1024) // 128 * 128 and use.write_5m == 0
    short = {"messages": [{"role": "user", "content": "hi"}]}
    assert cache.openai("gpt", openai_blocks(short)) == CacheUse() == cache.openai("gpt", openai_blocks(short))
