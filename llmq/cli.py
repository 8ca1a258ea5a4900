"""The ``llmq`` command. Each subcommand lives in ``llmq/commands/<name>.py``.

Commands import worker-side modules lazily, inside their ``run`` functions, so that importing
``producers`` stays light (only ``workers.contract`` and ``workers.connections`` from the worker side).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from llmq.preflight import check_broker, explain, ping_redis
from producers.errors import SubmitRefusedError
from producers.watermark import is_out_of_memory

__all__ = ["EXIT_REFUSED", "build_parser", "main"]

#: The exit status of a command whose submit the queue refused for now (Redis full, a quota), or
#: whose write a full Redis refused (``llmq budget set``...): the same command later may work.
#: ``EX_TEMPFAIL`` of sysexits.h.
EXIT_REFUSED = 75

#: Modules under ``llmq.commands`` that each define ``register(subparsers)``.
COMMANDS = (
    "worker",
    "simulate",
    "redisserver",
    "submit",
    "subscribe",
    "demo",
    "budget",
    "spend",
    "cache",
    "limits",
    "batch",
    "flower",
    "gateway",
    "prompts",
    "tools",
    "jobs",
    "schemas",
    "queues",
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


#: Commands that cannot do anything without Redis: checked before they start, so that one which
#: would otherwise retry quietly (a Celery worker, a subscriber riding out restarts) says so at once.
NEEDS_REDIS = frozenset(
    {
        "worker",
        "submit",
        "subscribe",
        "budget",
        "spend",
        "cache",
        "limits",
        "batch",
        "flower",
        "gateway",
        "jobs",
        "queues",
    }
)
#: Commands that consume or serve the job queue for as long as they run: a broker of its own
#: (``LLMQ_BROKER_URL``) is checked before they start too (a worker would retry it for minutes).
NEEDS_BROKER = frozenset({"worker", "gateway", "flower"})


def _preflight(command: str) -> None:
    from producers.settings import producer_settings

    settings = producer_settings()
    if command in NEEDS_REDIS:
        ping_redis(settings.redis_url, settings.redis_connect_timeout_s)
    if command in NEEDS_BROKER and settings.broker != settings.redis_url:
        check_broker(settings.broker, settings.redis_connect_timeout_s)


def _explained(exc: Exception) -> str | None:
    """The one line for a Redis or broker failure (``llmq/preflight.py``), or None."""
    from producers.settings import producer_settings

    try:
        settings = producer_settings()
    except ValidationError:
        return None
    return explain(exc, redis_url=settings.redis_url, broker_url=settings.broker)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _preflight(args.command)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except SubmitRefusedError as exc:  # nothing was enqueued; try again later (the line says when)
        print(f"llmq: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ValidationError as exc:  # a setting from the environment (LLMQ_REDIS_URL=http://...)
        for error in exc.errors(include_url=False, include_input=False):
            name = "LLMQ_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"llmq: {name}: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except Exception as exc:  # Redis or the broker (every command, one line each); anything else is a bug
        line = _explained(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return EXIT_REFUSED if is_out_of_memory(exc) else 2  # a full Redis: try again later, as a submit


#: A command whose reader went away ends as Unix tools do when SIGPIPE kills them (128 + 13).
EXIT_PIPE_CLOSED = 141


def _reader_gone() -> int:
    """The reader of our stdout went away (``llmq subscribe --json ID | head``): stop quietly.

    What is still buffered for stdout cannot be written; pointing stdout at /dev/null keeps the
    interpreter's final flush from printing a second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
