"""``llmq gateway``: the HTTP gateway (jobs API, SSE, OpenAI-compatible chat) on uvicorn.

Tokens: ``LLMQ_GATEWAY_TOKENS`` (``token:tenant,token:tenant``; a bare token is the ``default``
tenant) plus ``[gateway.tokens]`` of the config file (``LLMQ_CONFIG``); the environment wins for
a token in both. Without any token the gateway refuses to start unless ``--allow-anonymous``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producers.gateway.state import Panels


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gateway", help="run the HTTP gateway (jobs API, SSE, OpenAI-compatible endpoint)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--queue", "-Q", default=os.environ.get("LLMQ_QUEUE", "llmq"))
    p.add_argument("--allow-anonymous", action="store_true", help="serve requests without a token (tenant 'anonymous')")
    p.add_argument(
        "--on-disconnect",
        choices=("cancel", "finish"),
        default="cancel",
        help="what happens to a chat completion's job when its client goes away (default: cancel)",
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--write-timeout", type=float, default=10.0, help="seconds before a stalled SSE client is dropped")
    p.add_argument(
        "--hold-headers",
        type=float,
        default=10.0,
        metavar="S",
        help="a streamed chat completion waits up to S seconds for content before sending its headers (default 10)",
    )
    p.add_argument("--sse-queue-size", type=int, default=16, help="events buffered per SSE client (default 16)")
    p.add_argument("--heartbeat", type=float, default=15.0, help="seconds between SSE heartbeats while idle")
    p.add_argument(
        "--sndbuf",
        type=int,
        default=None,
        metavar="BYTES",
        help="pin each connection's kernel send buffer (bounds kernel memory per slow SSE client; default: autotuned)",
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def load_tokens(environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """Tokens from the config file and ``LLMQ_GATEWAY_TOKENS`` (``ValueError`` names the bad entry)."""
    from producers.gateway.settings import parse_tokens

    tokens: dict[str, str] = {}
    path = environ.get("LLMQ_CONFIG")
    if path:
        from workers.routes import load_config  # lazily: producers import no worker module at import time

        tokens.update(load_config(path).gateway.tokens)
    tokens.update(parse_tokens(environ.get("LLMQ_GATEWAY_TOKENS")))
    return tokens


def panels() -> Panels:
    """The browser view's budget source: the ledger, read in a thread (the gateway does not import
    the worker side; this command may). Queue depths: the gateway's default (the queue's schedule)."""
    import asyncio

    from llmq.commands.budget import build_ledger
    from producers.gateway.state import Panels
    from producers.settings import producer_settings
    from workers.connections.redisclient import redis_client

    ledger = build_ledger(
        redis_client(os.environ.get("LLMQ_REDIS_URL") or producer_settings().redis_url, max_connections=4)
    )

    async def budget(tenant: str) -> dict[str, Any] | None:
        snapshot = await asyncio.to_thread(ledger.show)
        return dict(snapshot.model_dump(mode="json"))

    return Panels(budget=budget)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from producers.gateway import GatewaySettings, create_gateway
    from producers.gateway.server import serve
    from producers.settings import producer_settings

    try:
        tokens = load_tokens()
    except Exception as exc:  # ValueError, ConfigurationError: both name the problem, never a token
        print(f"llmq gateway: {exc}", file=sys.stderr)
        return 2
    if not tokens and not args.allow_anonymous:
        print(
            "llmq gateway: no API tokens configured. Set LLMQ_GATEWAY_TOKENS=token:tenant[,token:tenant...] "
            "or [gateway.tokens] in the LLMQ_CONFIG file, or pass --allow-anonymous to run without auth.",
            file=sys.stderr,
        )
        return 2
    try:
        settings = GatewaySettings(
            redis_url=os.environ.get("LLMQ_REDIS_URL"),
            queue=args.queue,
            tokens=tokens,
            allow_anonymous=args.allow_anonymous,
            on_disconnect=args.on_disconnect,
            max_body_bytes=args.max_body_bytes,
            write_timeout_s=args.write_timeout,
            heartbeat_s=args.heartbeat,
            sse_queue_size=args.sse_queue_size,
            hold_headers_s=args.hold_headers,
            history_days=producer_settings().history_days,
            ui_content=os.environ.get("LLMQ_UI_CONTENT", "").strip().lower() in ("1", "true", "yes", "on"),
        )
    except ValidationError as exc:  # messages only: the input (tokens) is never printed
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        print(f"llmq gateway: {problems}", file=sys.stderr)
        return 2
    if not tokens:
        print("llmq gateway: WARNING: running without authentication (--allow-anonymous)", file=sys.stderr)
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    key = '"anything"' if not tokens else "<one of the tokens>"
    print(
        f"llmq gateway listening on http://{args.host}:{args.port} ({len(tokens)} token(s), queue {settings.queue!r})\n"
        f'  OpenAI SDK: OpenAI(base_url="{base}/v1", api_key={key}); models: GET {base}/v1/models',
        file=sys.stderr,
        flush=True,
    )
    serve(
        create_gateway(settings, panels=panels()),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        sndbuf=args.sndbuf,
    )
    return 0
