"""Output lines in the OpenAI Batch output format, so existing tooling reads them unchanged.

* success: ``response.status_code`` 200 and ``response.body`` a ``chat.completion`` object;
* a provider's HTTP error: ``response.status_code`` is its status and ``response.body`` carries
  ``{"error": {message, type, param, code}}`` (``error`` is null), as OpenAI writes them;
* anything else (timeout, budget, cancelled, invalid line): ``response`` null and
  ``error: {code, message}`` (plus ``param`` and ``line`` for invalid lines, as in OpenAI's
  batch validation errors).

Our own fields live under one extra key, ``x_llmqueue`` (job id, input line, model used,
attempts, cost, whether usage was estimated, our error), which OpenAI-shaped readers ignore.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from producers.batch.formats import LineIssue
from producers.chatshape import alternative_choices, logprobs_object
from workers.contract import CompletionResult

__all__ = ["EXTRA_KEY", "invalid_record", "result_record"]

EXTRA_KEY = "x_llmqueue"


def _hex(value: str, n: int) -> str:
    return hashlib.blake2b(value.encode(), digest_size=n // 2).hexdigest()


def _model_name(model_used: str | None) -> str | None:
    """``openai:gpt-4o-mini`` -> ``gpt-4o-mini`` (the ``model`` a chat.completion carries)."""
    if not model_used:
        return None
    return model_used.split(":", 1)[1] if ":" in model_used else model_used


def result_record(result: CompletionResult, custom_id: str, line: int | None = None) -> tuple[bool, dict[str, Any]]:
    """``(succeeded, output line)`` for one finished job."""
    usage = result.usage
    extra: dict[str, Any] = {
        "job_id": result.id,
        "line": line,
        "status": result.status,
        "model_used": result.model_used,
        "attempts": [a.model_dump(mode="json", exclude_none=True) for a in result.attempts],
        "cost_usd": result.cost_usd,
        "usage_estimated": usage.estimated,
    }
    if result.prompt is not None:
        extra["prompt"] = result.prompt.model_dump(mode="json")
    record: dict[str, Any] = {"id": f"batch_req_{_hex(result.id, 32)}", "custom_id": custom_id}
    if result.status == "succeeded":
        message: dict[str, Any] = {
            "role": "assistant",
            "content": result.content if result.content or not result.tool_calls else None,
            "refusal": None,
        }
        if result.tool_calls:
            message["tool_calls"] = [c.model_dump(mode="json") for c in result.tool_calls]
        body = {
            "id": f"chatcmpl-{_hex(result.id, 24)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": _model_name(result.model_used),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": logprobs_object(result.logprobs),
                    "finish_reason": result.finish_reason or ("tool_calls" if result.tool_calls else "stop"),
                },
                *alternative_choices(result),
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            },
            "system_fingerprint": None,
        }
        record["response"] = {"status_code": 200, "request_id": result.id, "body": body}
        record["error"] = None
        record[EXTRA_KEY] = extra
        return True, record
    info = result.error
    extra["error"] = info.model_dump(mode="json", exclude_none=True) if info else None
    if info is not None and info.status is not None and info.status >= 400:
        error_body = {"message": info.message, "type": info.type, "param": None, "code": info.code or info.type}
        record["response"] = {"status_code": info.status, "request_id": result.id, "body": {"error": error_body}}
        record["error"] = None
    else:
        code = (info.code or info.type) if info else result.status
        message_text = info.message if info else f"the job ended {result.status}"
        record["response"] = None
        record["error"] = {"code": code, "message": message_text}
    record[EXTRA_KEY] = extra
    return False, record


def invalid_record(issues: list[LineIssue]) -> dict[str, Any]:
    """The errors-file line for an input line that did not validate (nothing was run)."""
    first = issues[0]
    custom_id = next((i.custom_id for i in issues if i.custom_id), None)
    seed = f"invalid:{first.line}:{custom_id}"
    return {
        "id": f"batch_req_{_hex(seed, 32)}",
        "custom_id": custom_id,
        "response": None,
        "error": first.as_json(),
        EXTRA_KEY: {"invalid": True, "line": first.line, "errors": [i.as_json() for i in issues]},
    }
