"""``llmq limits``: what the shared guards say about each model right now.

    llmq limits [--json] [MODEL ...]     (provider:model, a route alias or a bare name, resolved as jobs are)

For every model in ``LLMQ_CONFIG`` (its ``[models]`` and routes) and every model with guard state
in Redis (or just the ones named): the circuit breaker (closed / open / half-open, for how long,
and the error that opened it), the not-before time a 429 set, and how many requests and tokens
the RPM/TPM buckets would admit now. Read-only; Redis is ``LLMQ_REDIS_URL``. Worker-side modules
are imported inside :func:`run`, never at import time.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from llmq.commands.table import print_table
from workers.connections.redisclient import redis_client

_TAGGED = re.compile(rb"^llmq:(?:cb|nb|rl):\{(.+?)\}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("limits", help="circuit breakers, 429 holds and rate buckets per model")
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="provider:model, a route alias or a bare model name (default: all known)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _known_models(client: Any, config: Any) -> list[str]:
    found = set(config.models)
    for chain in config.routes.values():
        found.update(chain)
    for pattern in ("llmq:cb:*", "llmq:nb:*", "llmq:rl:*"):
        for key in client.scan_iter(match=pattern, count=500):
            match = _TAGGED.match(key)
            if match:
                found.add(match.group(1).decode())
    return sorted(found)


def describe_model(model_id: str, config: Any, limiter: Any, breaker: Any) -> dict[str, Any]:
    from workers.guards.policy import rate_limits_for

    limits = rate_limits_for(config.model(model_id), model_id)
    state = breaker.state(model_id)
    why: dict[str, Any] = {}
    if state.why:
        try:
            why = json.loads(state.why)
        except ValueError:
            why = {}
    rpm_left, tpm_left = limiter.available(model_id, limits) if limits.active else (None, None)
    return {
        "model": model_id,
        "breaker": state.state,
        "breaker_retry_in_s": round(state.retry_in_s, 1),
        "opened_by": why.get("t"),
        "not_before_s": round(limiter.not_before(model_id), 3),
        "rpm": limits.rpm,
        "rpm_available": rpm_left,
        "tpm": limits.tpm,
        "tpm_available": tpm_left,
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _print_table(rows: list[dict[str, Any]]) -> None:
    table = [("MODEL", "BREAKER", "NOT BEFORE", "RPM (NOW/LIMIT)", "TPM (NOW/LIMIT)")]
    for r in rows:
        breaker = r["breaker"]
        if breaker != "closed":
            breaker += f" {r['breaker_retry_in_s']}s" if breaker == "open" else ""
            breaker += f" ({r['opened_by']})" if r["opened_by"] else ""
        table.append(
            (
                r["model"],
                breaker,
                f"{r['not_before_s']}s" if r["not_before_s"] else "-",
                f"{_cell(r['rpm_available'])}/{_cell(r['rpm'])}" if r["rpm"] else "-",
                f"{_cell(r['tpm_available'])}/{_cell(r['tpm'])}" if r["tpm"] else "-",
            )
        )
    print_table(table)


def _catalog(client: Any, config: Any, settings: Any) -> Any:
    """The names jobs may use, as a producer judges them (``producers/catalog.py``): what the live
    workers of ``LLMQ_QUEUE`` publish, else the config file with this machine's price table (so a
    typo of a priced name is named: ``gtp-4o`` -> did you mean ``gpt-4o``?)."""
    from producers.catalog import LiveCatalog
    from workers.accounting.prices import PriceBook, price_sources
    from workers.contract.catalog import catalog_from_config

    live = LiveCatalog(settings.queue, default_model=settings.default_model).get(client)
    if live is not None:
        return live
    base = catalog_from_config(config.model_dump(), default_model=settings.default_model)
    book = PriceBook(config.models, unpriced=config.budget.unpriced, sources=price_sources(config.providers))
    return base.model_copy(update={"priced": {name: book.table(name) for name in base.providers}})


def _resolve(catalog: Any, name: str) -> list[str]:
    """``name``'s ids as a job's; :class:`UnknownModelError` for a name a job could not use either."""
    from workers.contract.catalog import UnknownModelError

    ids, error, near = catalog.judge(name)
    if error is not None:
        raise error
    for model_id, meant in near:
        raise UnknownModelError(catalog.unpriced_message(model_id, meant), name, [meant])
    return list(ids)


def run(args: argparse.Namespace) -> int:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from workers.contract.catalog import UnknownModelError
    from workers.guards.breaker import CircuitBreaker
    from workers.guards.ratelimit import RateLimiter
    from workers.llm.errors import ConfigurationError
    from workers.routes import load_config
    from workers.settings import get_settings

    settings = get_settings()
    client = redis_client(
        settings.redis_url,
        max_connections=8,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        retry=Retry(NoBackoff(), 1),
    )
    try:
        config = load_config(settings.config)
        catalog = _catalog(client, config, settings)
        named = [model_id for name in args.models for model_id in _resolve(catalog, name)]  # the jobs' own rule
        models = list(dict.fromkeys(named)) or _known_models(client, config)
        limiter, breaker = RateLimiter(client), CircuitBreaker(client)
        rows = [describe_model(m, config, limiter, breaker) for m in models]
    except (ConfigurationError, UnknownModelError, ValueError) as exc:
        print(f"llmq limits: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        _print_table(rows)
    else:
        print("no models configured and no guard state in Redis")
    return 0
