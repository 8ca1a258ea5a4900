"""A provider request from flat fields, as tests write them: ``chat_request(msgs, max_tokens=5, top_p=0.5)``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from workers.contract import Message, RequestParams, Tool
from workers.llm.abort import AbortSignal
from workers.llm.base import ChatRequest

__all__ = ["chat_request"]


def chat_request(
    messages: Iterable[Message],
    *,
    tools: Iterable[Tool] = (),
    headers: Mapping[str, str] | None = None,
    abort: AbortSignal | None = None,
    prompt_tokens: int | None = None,
    **params: Any,
) -> ChatRequest:
    """``params`` are :class:`RequestParams` fields (validated as the contract validates a job's)."""
    return ChatRequest(
        messages=list(messages),
        params=RequestParams(**params),
        tools=list(tools),
        headers=dict(headers or {}),
        abort=abort,
        prompt_tokens=prompt_tokens,
    )
