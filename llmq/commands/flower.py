"""``llmq flower``: Flower against the same broker as the workers, behind basic auth by default.

Credentials come from ``FLOWER_BASIC_AUTH=user:password`` (several pairs separated by commas),
which Flower reads from its environment itself, so the password never appears on a command line
(``ps``). Without it the command refuses to start unless ``--no-auth`` is given explicitly; with
``--no-auth`` the HTTP API is opened too (``FLOWER_UNAUTHENTICATED_API``), so bind it to
127.0.0.1 only. Workers send task events already (``worker_send_task_events``, ``LLMQ_TASK_EVENTS``), so
tasks, their states, runtimes and the ``llmq`` queue length show up; job payloads carry no
credentials (``CompletionJob`` rejects secret-looking metadata, provider keys stay in the
workers' environment). ``/metrics`` and ``/healthcheck`` are always served without auth.
"""

from __future__ import annotations

import argparse
import os
import sys

_AUTH_ENV = "FLOWER_BASIC_AUTH"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("flower", help="run Flower (task monitor) against LLMQ_REDIS_URL, with basic auth")
    p.add_argument("--port", type=int, default=os.environ.get("FLOWER_PORT", "5555"))
    p.add_argument(
        "--address",
        default=os.environ.get("FLOWER_ADDRESS", "127.0.0.1"),
        help="listen address (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    p.add_argument("--url-prefix", default=None, help="when served behind a proxy under a path")
    p.add_argument("--no-auth", action="store_true", help="serve without authentication (local use only)")
    p.set_defaults(func=run)


def check_auth(value: str | None) -> str | None:
    """The problem with a ``FLOWER_BASIC_AUTH`` value, or None when it is usable."""
    if not value:
        return f"set {_AUTH_ENV}=user:password (or pass --no-auth for a local, unauthenticated Flower)"
    for pair in value.split(","):
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            return f"{_AUTH_ENV} must be user:password[,user2:password2]"
    return None


def command(args: argparse.Namespace) -> list[str]:
    """The celery command line (the broker comes from the app's settings: ``LLMQ_REDIS_URL``)."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.runtime.app", "flower"]
    argv += [f"--address={args.address}", f"--port={args.port}"]
    if args.url_prefix:
        argv.append(f"--url_prefix={args.url_prefix}")
    return argv


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.no_auth:
        env.pop(_AUTH_ENV, None)
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        print("llmq flower: running WITHOUT authentication", file=sys.stderr)
    else:
        problem = check_auth(env.get(_AUTH_ENV))
        if problem:
            print(f"llmq flower: {problem}", file=sys.stderr)
            return 2
        env.pop("FLOWER_UNAUTHENTICATED_API", None)
    argv = command(args)
    # exec: Flower gets the signals directly, and nothing of ours stays resident
    os.execve(argv[0], argv, env)
    return 0  # pragma: no cover
