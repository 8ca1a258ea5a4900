"""The ``llmq`` command. Each subcommand lives in ``llmq/commands/<name>.py``.

Commands import worker-side modules lazily, inside their ``run`` functions, so that importing
``producers`` stays light (only ``workers.contract`` from the worker side).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

#: Modules under ``llmq.commands`` that each define ``register(subparsers)``.
COMMANDS = (
    "worker",
    "simulate",
    "submit",
    "subscribe",
    "demo",
    "budget",
    "limits",
    "batch",
    "flower",
    "gateway",
    "prompts",
    "tools",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmq", description="Run LLM completion jobs through Redis and Celery.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"llmq.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"llmq.commands.{name}":
                continue  # a command not shipped in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
