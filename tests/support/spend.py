"""What the crash tests read back from a real Redis: the month's global spend, one call's price, stored results."""

from __future__ import annotations

from typing import Any

import redis

from workers.accounting.ledger import GLOBAL_SCOPE, Ledger, to_micros
from workers.accounting.prices import PriceBook
from workers.accounting.tokens import TokenCounter
from workers.contract import Message, Usage

__all__ = ["global_spent_usd", "one_call_usd", "results_stored"]


def one_call_usd(model: str, prompt: list[dict[str, Any]], completion_tokens: int) -> float:
    """What the ledger charges for one served call of ``prompt`` answered with ``completion_tokens`` tokens."""
    prompt_tokens = TokenCounter().count(model, [Message(**m) for m in prompt]).tokens
    cost = PriceBook().lookup(model).cost(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
    return to_micros(cost) / 1e6


def global_spent_usd(url: str) -> float:
    """The month's settled global spend in the ledger at ``url``."""
    client = redis.Redis.from_url(url)
    try:
        return next(s for s in Ledger(client).show().scopes if s.scope == GLOBAL_SCOPE).spent_usd
    finally:
        client.close()


def results_stored(url: str, ids: list[str]) -> int | None:
    """How many of ``ids`` have a stored result; None while Redis does not answer (a restart)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(f"llmq:job:{{{job_id}}}:result")
        return int(sum(pipe.execute()))
    except redis.RedisError:
        return None
    finally:
        client.close()
