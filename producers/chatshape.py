"""A result's extra answers and log probabilities in Chat Completions' shapes, for every producer
that writes ``chat.completion`` objects (the gateway's ``/v1/chat/completions``, ``llmq batch``'s
output lines)."""

from __future__ import annotations

from typing import Any

from workers.contract import CompletionResult, TokenLogprob

__all__ = ["alternative_choices", "logprobs_object"]


def logprobs_object(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """A choice's ``logprobs`` (``{"content": [...], "refusal": null}``; None when not asked for)."""
    if logprobs is None:
        return None
    return {"content": [t.model_dump(mode="json") for t in logprobs], "refusal": None}


def alternative_choices(result: CompletionResult) -> list[dict[str, Any]]:
    """The choices after the first of a job with ``n`` > 1 (index 1 to n-1)."""
    return [
        {
            "index": alt.index,
            "message": {"role": "assistant", "content": alt.content, "refusal": None, "annotations": []},
            "logprobs": logprobs_object(alt.logprobs),
            "finish_reason": alt.finish_reason or "stop",
        }
        for alt in result.alternatives
    ]
