"""``llmq simulate``: the built-in provider simulator (OpenAI, Anthropic and Ollama wire formats).

Serves ``/v1/chat/completions``, ``/v1/messages`` and ``/api/chat`` on one port, with scripted
latency, token pacing and faults; counters at ``GET /_sim/stats``. Fault syntax: ``simulator/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys


def parse_rates(raw: str | None) -> dict[str, float]:
    """``"429=0.05,503=0.02"`` -> ``{"429": 0.05, "503": 0.02}`` (fault items are validated)."""
    from simulator.script import parse_fault

    rates: dict[str, float] = {}
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"fault rate {part!r} must look like 429=0.05")
        try:
            parse_fault(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        try:
            rate = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"fault rate {part!r}: {value!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:
            raise argparse.ArgumentTypeError(f"fault rate {part!r} must be between 0 and 1")
        rates[name.strip().lower()] = rate
    if sum(rates.values()) > 1.0 + 1e-9:
        raise argparse.ArgumentTypeError("fault rates add up to more than 1")
    return rates


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run the provider simulator",
        description="Provider simulator (OpenAI, Anthropic, Ollama, Azure OpenAI, Gemini and Bedrock wire "
        "formats) with scripted latency and faults.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8790)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before the first token")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="token pacing (0 = unpaced)")
    p.add_argument("--completion-tokens", type=int, default=20, help="tokens per answer")
    p.add_argument(
        "--fault-rate",
        type=parse_rates,
        default={},
        help="random faults, e.g. 429=0.05,503=0.02,cut=0.01,midstream=0.01 (seeded)",
    )
    p.add_argument("--seed", type=int, default=7, help="seed for --fault-rate draws")
    p.add_argument(
        "--batch-processing-s",
        type=float,
        default=0.0,
        help="provider batches: seconds until every line is answered (default 0: at the first poll)",
    )
    p.add_argument(
        "--batch-window-s",
        type=float,
        default=86_400.0,
        help="provider batches: the completion window; lines not answered within it expire (default 24 h)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simulator.app import SimConfig, serve

    if min(args.latency, args.tokens_per_s, args.completion_tokens, args.batch_processing_s, args.batch_window_s) < 0:
        print(
            "llmq simulate: --latency, --tokens-per-s, --completion-tokens and --batch-* must be >= 0", file=sys.stderr
        )
        return 2
    config = SimConfig(
        latency=args.latency,
        tokens_per_s=args.tokens_per_s,
        completion_tokens=args.completion_tokens,
        fault_rates=args.fault_rate,
        seed=args.seed,
        batch_processing_s=args.batch_processing_s,
        batch_window_s=args.batch_window_s,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        print(f"llmq simulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
