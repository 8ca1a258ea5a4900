"""Request-parameter flags shared by the commands that build a job (``llmq submit``).

``--json-schema FILE`` (a JSON Schema file, or an OpenAI ``json_schema`` object with ``name`` and
``schema``), ``--json-object``, ``--max-repairs``, ``--stop`` (repeatable), ``--top-p``, ``--seed``,
``--user``, ``--tool-choice``, ``--reasoning-effort``, ``--thinking-budget`` and ``--image`` (a file,
sent as a data URL, or an https URL; repeatable); ``--param NAME=VALUE`` sets any request parameter
of the contract by its job field name (``RequestParams``; VALUE read as JSON, else as text), so a
parameter added to the contract needs no flag of its own: ``--param presence_penalty=0.5
--param n=2 --param logit_bias='{"50256": -100}'``.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
from pathlib import Path
from typing import Any

from workers.contract import RequestParams
from workers.contract.catalog import close_names
from workers.contract.schedule import PRIORITIES, priority_error

__all__ = ["add_param_args", "apply_params", "image_part", "priority_arg"]


def add_param_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("request parameters")
    g.add_argument("--json-schema", metavar="FILE", help="answer JSON valid for this JSON Schema (result.parsed)")
    g.add_argument("--json-object", action="store_true", help="answer a JSON object")
    g.add_argument("--max-repairs", type=int, help="repair turns for an invalid answer (default 1)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop sequence (up to 4)")
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--user", help="the end user (OpenAI's user field): in telemetry and llmq spend --by user")
    g.add_argument("--tool-choice", help="auto, none, required, or a tool name")
    g.add_argument("--reasoning-effort", choices=["minimal", "low", "medium", "high"])
    g.add_argument("--thinking-budget", type=int, metavar="TOKENS", help="Anthropic extended thinking budget")
    g.add_argument("--image", action="append", default=[], metavar="FILE|URL", help="attach an image (repeatable)")
    g.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any request parameter by its job field name, VALUE as JSON or text (repeatable): "
        "--param presence_penalty=0.5 --param n=2 --param logprobs=true",
    )


def parse_param(item: str) -> tuple[str, Any]:
    """``NAME=VALUE`` of ``--param``: a request parameter's name and its value (JSON, else text)."""
    name, sep, raw = item.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"--param {item!r}: expected NAME=VALUE")
    if name not in RequestParams.model_fields:
        close = close_names(name, RequestParams.model_fields)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"--param {name}: not a request parameter{hint}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def image_part(ref: str) -> dict[str, Any]:
    """An ``image_url`` content part for a local file (as a data URL) or an https URL."""
    if ref.startswith(("https://", "http://", "data:")):
        return {"type": "image_url", "image_url": {"url": ref}}
    path = Path(ref)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}


def _schema_format(path: str) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, dict) and "schema" in doc and "name" in doc:
        return {"type": "json_schema", "json_schema": doc}
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(path).stem)[:64] or "output"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": doc}}


def apply_params(args: argparse.Namespace, job: dict[str, Any]) -> dict[str, Any]:
    """Add the flags that were given to ``job`` (a dict validated later by the client)."""
    if args.json_schema:
        job["response_format"] = _schema_format(args.json_schema)
    elif args.json_object:
        job["response_format"] = {"type": "json_object"}
    if args.max_repairs is not None:
        job["max_repairs"] = args.max_repairs
    if args.stop:
        job["stop"] = list(args.stop)
    for name in ("top_p", "seed", "user"):
        if getattr(args, name) is not None:
            job[name] = getattr(args, name)
    if args.tool_choice:
        choice = args.tool_choice
        job["tool_choice"] = (
            choice if choice in ("auto", "none", "required") else {"type": "function", "function": {"name": choice}}
        )
    if args.reasoning_effort or args.thinking_budget:
        reasoning: dict[str, Any] = {}
        if args.reasoning_effort:
            reasoning["effort"] = args.reasoning_effort
        if args.thinking_budget:
            reasoning["budget_tokens"] = args.thinking_budget
        job["reasoning"] = reasoning
    for item in args.param:
        name, value = parse_param(item)
        job[name] = value
    if args.image:
        user = job["messages"][-1]
        user["content"] = [{"type": "text", "text": user["content"]}, *(image_part(i) for i in args.image)]
    return job


def priority_arg(value: str) -> str:
    """``--priority``'s type: a class name, else a usage error with the nearest one (did you mean ...?)."""
    if value not in PRIORITIES:
        raise argparse.ArgumentTypeError(priority_error(value))
    return value
