"""``llmq simulate``: the built-in provider simulator (OpenAI, Anthropic and Ollama wire formats)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib


def parse_rates(raw: str | None) -> dict[str, float]:
    """``"429=0.05,503=0.02"`` -> ``{"429": 0.05, "503": 0.02}``."""
    rates: dict[str, float] = {}
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"fault rate {part!r} must look like 429=0.05")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"fault rate {part!r}: {value!r} is not a number") from None
    if sum(rates.values()) > 1.0:
        raise argparse.ArgumentTypeError("fault rates add up to more than 1")
    return rates


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run the provider simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8790)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before the first token")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="token pacing (0 = unpaced)")
    p.add_argument("--completion-tokens", type=int, default=20, help="tokens per answer")
    p.add_argument("--fault-rate", type=parse_rates, default={}, help="e.g. 429=0.05,503=0.02,cut=0.01")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simulator.app import SimConfig, serve

    config = SimConfig(
        latency=args.latency,
        tokens_per_s=args.tokens_per_s,
        completion_tokens=args.completion_tokens,
        fault_rates=args.fault_rate,
        seed=args.seed,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, args.host, args.port))
    return 0
