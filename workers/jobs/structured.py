"""Structured outputs, guaranteed: validate the answer, repair it a bounded number of times.

With ``response_format`` (``json_object`` or ``json_schema``) the final answer of a job must be
JSON (and, for a schema, valid for it by JSON Schema Draft 2020-12). An invalid answer gets up to
``job.max_repairs`` repair turns: the answer and its validation errors go back to the model as
one more assistant + user exchange, and the model is called again through the full chain (each
turn pre-counted, reserved and charged like the first). When no turn produced a valid answer the
job fails ``invalid_output``; the last answer's raw content is kept in the result.

A refusal (OpenAI's ``refusal``, Anthropic's ``refusal`` stop) is not validated: it is its own
outcome (``result.refusal``). A stream still streams each turn's deltas; validation happens at the
end of a turn, and a ``repair`` event tells consumers to discard the text so far.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from workers.contract import CompletionJob, JsonObjectFormat, JsonSchemaFormat, Message, Usage
from workers.llm.base import Completion
from workers.llm.errors import BadRequestError, InvalidOutputError

__all__ = ["StructuredOutcome", "enforce", "repair_prompt", "validate_answer", "validator_for"]

#: Validation errors quoted back to the model (and kept in the error), at most.
MAX_ERRORS = 10


@dataclass
class StructuredOutcome:
    completion: Completion
    parsed: Any = None
    repairs: int = 0


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise BadRequestError(
            f"response_format.json_schema.schema is not a valid JSON Schema: {exc.message}", code="invalid_schema"
        ) from None
    return Draft202012Validator(schema)


def validator_for(job: CompletionJob) -> Draft202012Validator | None:
    """The compiled schema of the job's ``json_schema`` format (None: JSON object only / none)."""
    fmt = job.response_format
    if isinstance(fmt, JsonSchemaFormat):
        return _validator(json.dumps(fmt.json_schema.schema_, sort_keys=True))
    return None


def validate_answer(job: CompletionJob, text: str) -> tuple[Any, list[str]]:
    """``(parsed, [])`` for a valid answer, ``(None, errors)`` otherwise."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        return None, [f"the answer is not valid JSON: {exc}"]
    if isinstance(job.response_format, JsonObjectFormat) and not isinstance(parsed, dict):
        return None, [f"the answer must be a JSON object, not {type(parsed).__name__}"]
    validator = validator_for(job)
    if validator is not None:
        errors = sorted(validator.iter_errors(parsed), key=lambda e: list(e.absolute_path))
        if errors:
            return None, [
                f"at {'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"[:500]
                for e in errors[:MAX_ERRORS]
            ]
    return parsed, []


def repair_prompt(errors: list[str]) -> str:
    listed = "\n".join(f"- {e}" for e in errors)
    return (
        "Your answer is not valid for the required response format:\n"
        f"{listed}\n"
        "Answer again with only the corrected JSON, nothing else."
    )


def _add(total: Usage | None, more: Usage | None) -> Usage | None:
    if total is None or more is None:
        return more or total
    return Usage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        cached_tokens=total.cached_tokens + more.cached_tokens,
        cache_write_tokens=total.cache_write_tokens + more.cache_write_tokens,
        reasoning_tokens=total.reasoning_tokens + more.reasoning_tokens,
        estimated=total.estimated or more.estimated,
    )


def enforce(
    job: CompletionJob,
    messages: list[Message],
    completion: Completion,
    call: Callable[[list[Message]], Completion],
    on_repair: Callable[[int, list[str]], None],
) -> StructuredOutcome:
    """Validate ``completion``; call ``call(messages)`` for each repair turn; raise when out of turns.

    ``usage`` of the returned completion is the sum over every turn (all of them were charged).
    """
    validator_for(job)  # an invalid schema fails the job before anything is judged against it
    usage = completion.usage
    repairs = 0
    while True:
        if completion.refusal:
            completion.usage = usage
            return StructuredOutcome(completion, None, repairs)
        if completion.tool_calls and not completion.text:
            # the model called a (client) tool: the answer comes in a later turn
            completion.usage = usage
            return StructuredOutcome(completion, None, repairs)
        parsed, errors = validate_answer(job, completion.text)
        if not errors:
            completion.usage = usage
            return StructuredOutcome(completion, parsed, repairs)
        if repairs >= job.max_repairs:
            raise InvalidOutputError(
                f"the answer failed response_format after {repairs} repair turn(s): {errors[0]}",
                details={"errors": errors, "repairs": repairs},
            )
        repairs += 1
        on_repair(repairs, errors)
        messages = [
            *messages,
            Message(
                role="assistant",
                content=completion.text or "",
                reasoning_blocks=list(completion.reasoning_blocks) or None,
            ),
            Message(role="user", content=repair_prompt(errors)),
        ]
        completion = call(messages)
        usage = _add(usage, completion.usage)
