"""Checking a model's tool-call arguments before anything runs: parse, then validate.

The model's arguments are never trusted. They must be a JSON object that passes the tool's JSON
Schema (Draft 2020-12, the ``jsonschema`` package); ``@tool`` functions are then converted with
their pydantic model (which also runs any custom validators). Every problem becomes a short
message the model can act on; nothing invalid is ever executed. A message names the path and what
the schema wants, never the offending value (:func:`schema_message`): the arguments are the model's
output, and the messages also travel in events, results and the job history, where message text
must not appear.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from workers.tools.registry import ToolSpec

if TYPE_CHECKING:
    import jsonschema

__all__ = ["MAX_MESSAGES", "check_arguments", "schema_message"]

#: Validation messages fed back per call (the first ones, by position in the arguments).
MAX_MESSAGES = 10


def schema_message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message without the value that failed: ``is not of type 'integer'``, ``is too
    long``, ``'city' is a required property`` (names and limits come from the schema)."""
    text = error.message
    shown = repr(error.instance)
    if text.startswith(shown):
        return text[len(shown) :].lstrip() or f"fails {error.validator!r}"
    if len(shown) > 3 and shown in text:  # e.g. "False schema does not allow <value>"
        return text.replace(shown, "the value")
    return text


def _path(parts: Any) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return text or "(arguments)"


def check_arguments(spec: ToolSpec, raw: str) -> tuple[dict[str, Any] | None, list[str]]:
    """``(keyword arguments, [])`` for a valid call, else ``(None, messages)``."""
    try:
        args = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        return None, [f"arguments are not valid JSON: {exc}"]
    if not isinstance(args, dict):
        return None, [f"arguments must be a JSON object, got {type(args).__name__}"]
    errors = sorted(spec.validator.iter_errors(args), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        return None, [f"{_path(e.absolute_path)}: {schema_message(e)}" for e in errors[:MAX_MESSAGES]]
    if spec.model is None:
        return args, []
    try:
        parsed = spec.model.model_validate(args)
    except ValidationError as exc:
        return None, [f"{_path(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)[:MAX_MESSAGES]]
    return {name: getattr(parsed, name) for name in type(parsed).model_fields}, []
