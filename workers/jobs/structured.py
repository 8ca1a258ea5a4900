"""Structured outputs, guaranteed: validate the answer, repair it a bounded number of times.

With ``response_format`` (``json_object`` or ``json_schema``) the final answer of a job must be
JSON (and, for a schema, valid for it by JSON Schema Draft 2020-12). An invalid answer gets up to
``job.max_repairs`` repair turns: the answer and its validation errors go back to the model as
one more assistant + user exchange, and the model is called again through the full chain (a model
turn of ``workers/jobs/turn.py``: pre-counted, reserved and charged like the first). When no turn
produced a valid answer the job fails ``invalid_output``; the last answer's raw content is kept in
the result.

A refusal (OpenAI's ``refusal``, Anthropic's ``refusal`` stop) is not validated: it is its own
outcome (``result.refusal``). A stream still streams each turn's deltas; validation happens at the
end of a turn, and a ``repair`` event tells consumers to discard the text so far.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from workers.contract import CompletionJob, JsonObjectFormat, JsonSchemaFormat, Message, RepairEvent, Usage
from workers.jobs.run import JobRun, ToolLoopState
from workers.jobs.turn import Turns
from workers.llm.base import ChatRequest, Completion
from workers.llm.errors import BadRequestError, InvalidOutputError
from workers.tools.validate import schema_message

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

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
    # imported with the first json_schema job: ~3 MB a worker whose jobs ask for none does not hold
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

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
                f"at {'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {schema_message(e)}"[:500]
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


def enforce(
    run: JobRun, turns: Turns, request: ChatRequest, completion: Completion, loop: ToolLoopState | None
) -> StructuredOutcome:
    """Validate ``completion`` (the job's answer); take a repair turn (``turns``) per failed check;
    raise :class:`InvalidOutputError` when out of turns.

    A repair continues the conversation the answer came from: the request's, or after a tool loop
    (``loop``) the loop's last one, offering its tools. ``usage`` of the returned completion is the
    sum over every turn (all of them were charged); the loop's usage, the result's after a loop,
    counts the repair turns too.
    """
    job = run.job
    validator_for(job)  # an invalid schema fails the job before anything is judged against it
    continued = loop is not None and bool(loop.conversation)
    messages = loop.conversation[:-1] if loop is not None and continued else request.messages
    tools = loop.definitions if loop is not None and continued else request.tools
    usage = completion.usage
    repairs = 0
    run.text_parts = [completion.text]  # an invalid last answer is kept in the failed result
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
        run.publisher.emit(RepairEvent(job_id=job.id, seq=0, attempt=repairs, errors=errors))
        run.text_parts = []
        turns.begin_next()
        messages = [
            *messages,
            Message(
                role="assistant",
                content=completion.text or "",
                reasoning_blocks=list(completion.reasoning_blocks) or None,
            ),
            Message(role="user", content=repair_prompt(errors)),
        ]
        completion = turns.take(dataclasses.replace(request, messages=messages, tools=tools))
        run.text_parts = [completion.text]
        if loop is not None and loop.turns:
            loop.add_usage(completion.usage or Usage(estimated=True))
        if completion.usage is not None:
            usage = completion.usage if usage is None else usage + completion.usage
