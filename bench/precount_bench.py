"""Pre-count cost and ledger round trip, each against a baseline measured in the same run.

1. ``TokenCounter.count`` on a ~10,000-token conversation (messages, names, tool calls and
   results, one tool definition) vs raw ``encode_ordinary`` of the same text concatenated.
   Target: ratio <= 1.2. Two shapes: long turns (~100 messages) and short chat turns (~600).
2. ``Ledger.reserve`` + ``Ledger.settle`` per job on local Redis vs one PING round trip.
   Target: median <= 1 ms. Uses ``LLMQ_REDIS_URL`` if set (under a throwaway key prefix, deleted
   afterwards), else starts a private redis-server.

    .venv/bin/python bench/precount_bench.py [--runs 300] [--jobs 3000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import redis  # noqa: E402

from llmq.localredis import ManagedRedis  # noqa: E402
from workers.accounting.ledger import Ledger  # noqa: E402
from workers.accounting.tokens import TokenCounter  # noqa: E402
from workers.contract import FunctionCall, Message, Tool, ToolCall, ToolFunction  # noqa: E402

MODEL = "openai:gpt-4o"
WORDS = (
    "the budget ledger reserves worst case cost before every provider call and settles the actual "
    "usage afterwards so a redelivered job is never charged twice while workers stream deltas to "
    "subscribers through redis streams; naïve café 東京 naïveté 1234 5678 def f(x): return x ** 2"
).split()
TOOL = Tool(
    function=ToolFunction(
        name="search_docs",
        description="Search the documentation.",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for."},
                "scope": {"type": "string", "description": "Where.", "enum": ["api", "guide", "faq"]},
            },
            "required": ["query"],
        },
    )
)


def conversation(counter: TokenCounter, words_per_turn: tuple[int, int], target: int = 10_000) -> list[Message]:
    rng = random.Random(7)
    messages = [Message(role="system", content="You are a precise assistant for llmqueue operators.")]
    n = 0
    while counter.count(MODEL, messages, [TOOL]).tokens < target:
        n += 1
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words_per_turn)))
        if n % 7 == 0:
            call = ToolCall(
                id=f"call_{n}", function=FunctionCall(name="search_docs", arguments=f'{{"query": "{text[:40]}"}}')
            )
            messages.append(Message(role="assistant", tool_calls=[call]))
            messages.append(Message(role="tool", tool_call_id=f"call_{n}", content=text))
        else:
            messages.append(
                Message(role="user" if n % 2 else "assistant", content=text, name="ops" if n % 5 == 0 else None)
            )
    return messages


def same_text(messages: list[Message]) -> str:
    parts: list[str] = []
    for m in messages:
        parts += [p for p in (m.content, m.name, m.tool_call_id) if p]
        for c in m.tool_calls or []:
            parts += [c.function.name, c.function.arguments]
    return "".join(parts)


def interleaved_medians(runs: int, *fns: Callable[[], object]) -> list[float]:
    """Median seconds of each fn, alternating calls so drift hits all equally."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - t)
    return [statistics.median(s) for s in samples]


def bench_precount(runs: int) -> None:
    counter = TokenCounter()
    enc = counter.encoding("o200k_base")
    print("pre-count vs raw tiktoken encode_ordinary of the same text (o200k_base, gpt-4o)")
    for label, turn in (("long turns", (40, 220)), ("short turns", (5, 25))):
        messages = conversation(counter, turn)
        text = same_text(messages)
        tokens = counter.count(MODEL, messages, [TOOL]).tokens
        for _ in range(20):  # warm up
            counter.count(MODEL, messages, [TOOL])
            enc.encode_ordinary(text)
        raw, count, breakdown = interleaved_medians(
            runs,
            partial(enc.encode_ordinary, text),
            partial(counter.count, MODEL, messages, [TOOL]),
            partial(counter.breakdown, MODEL, messages, [TOOL]),
        )
        print(
            f"  {label:11} {len(messages):4d} messages {tokens:6d} tokens: raw {raw * 1e3:.3f} ms, "
            f"count {count * 1e3:.3f} ms (ratio {count / raw:.3f}), breakdown {breakdown * 1e3:.3f} ms "
            f"(ratio {breakdown / raw:.3f})"
        )


def bench_ledger(url: str, jobs: int) -> None:
    client = redis.Redis.from_url(url)
    prefix = f"llmq:{{bench-{uuid.uuid4().hex[:8]}}}"
    ledger = Ledger(client, monthly_limit_usd=1_000_000, prefix=prefix)
    for i in range(200):  # warm up: scripts loaded, connection open
        ledger.settle(ledger.reserve(f"warm-{i}", 1, "bench", 0.01), 0.005)
        client.ping()
    pings, trips = [], []
    for i in range(jobs):
        t = time.perf_counter()
        client.ping()
        pings.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = ledger.reserve(f"job-{i}", 1, f"tenant-{i % 10}", 0.0123)
        ledger.settle(r, 0.0042)
        trips.append(time.perf_counter() - t)
    trips.sort()
    print(f"reserve + settle on {url} ({jobs} jobs, 2 scopes each)")
    print(
        f"  median {statistics.median(trips) * 1e3:.3f} ms, p99 {trips[int(len(trips) * 0.99)] * 1e3:.3f} ms; "
        f"one PING median {statistics.median(pings) * 1e3:.3f} ms "
        f"(ratio {statistics.median(trips) / statistics.median(pings):.2f})"
    )
    keys = list(client.scan_iter(match=f"{prefix.replace('{', '[{]').replace('}', '[}]')}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=3000)
    args = parser.parse_args()
    bench_precount(args.runs)
    url = os.environ.get("LLMQ_REDIS_URL")
    if url:
        bench_ledger(url, args.jobs)
    else:
        with ManagedRedis() as server:
            bench_ledger(server.url, args.jobs)


if __name__ == "__main__":
    main()
