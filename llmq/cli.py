"""The ``llmq`` command. Each subcommand lives in ``llmq/commands/<name>.py``.

Commands import worker-side modules lazily, inside their ``run`` functions, so that importing
``producers`` stays light (only ``workers.contract`` from the worker side).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

import redis
from kombu.exceptions import OperationalError
from pydantic import ValidationError

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


#: Commands that cannot do anything without Redis: checked before they start, so that one which
#: would otherwise retry quietly (a Celery worker, a subscriber riding out restarts) says so at once.
NEEDS_REDIS = frozenset({"worker", "submit", "subscribe", "budget", "limits", "batch", "flower", "gateway"})


def _shown(url: str) -> str:
    """A Redis URL fit for a terminal: its password masked."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def _reason(exc: BaseException) -> str:
    """An exception's first line, without the client reprs redis-py appends (`` : <redis.client...>``)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(" : <", 1)[0]


def redis_unreachable(exc: Exception) -> str:
    """The one line a command prints when Redis does not answer (no traceback)."""
    from producers.settings import producer_settings

    url = _shown(producer_settings().redis_url)
    reason = _reason(exc)
    return (
        f"llmq: cannot reach Redis at {url} ({reason}); start Redis (redis-server, or ./dev demo) "
        "or point LLMQ_REDIS_URL at a running one"
    )


def broker_unreachable(exc: Exception) -> str:
    """The one line a command prints when the job queue's broker (RabbitMQ or Redis) does not answer."""
    from producers.settings import producer_settings

    return (
        f"llmq: cannot reach the job queue's broker at {_shown(producer_settings().broker)} ({_reason(exc)}); "
        "start it or point LLMQ_BROKER_URL at a running one (unset, the queue is in LLMQ_REDIS_URL)"
    )


def _ping() -> None:
    from producers.settings import producer_settings
    from workers.contract.redisclient import redis_client

    settings = producer_settings()
    client = redis_client(
        settings.redis_url,
        max_connections=2,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_connect_timeout_s,
    )
    try:
        client.ping()
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in NEEDS_REDIS:
            _ping()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # every command, one message
        print(redis_unreachable(exc), file=sys.stderr)
        return 2
    except ValidationError as exc:  # a setting from the environment (LLMQ_REDIS_URL=http://...)
        for error in exc.errors(include_url=False, include_input=False):
            name = "LLMQ_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"llmq: {name}: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except OperationalError as exc:  # kombu: the broker (LLMQ_BROKER_URL) did not answer
        print(broker_unreachable(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
