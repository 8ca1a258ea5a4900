"""Batch input lines -> validated :class:`CompletionJob` s, with errors that name the field.

Three line shapes are accepted, told apart by their keys:

* OpenAI Batch: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``.
* Anthropic Message Batches request entry: ``{"custom_id", "params": {...}}``. ``system``, text
  blocks, ``tool_use`` and ``tool_result`` blocks are translated to OpenAI-style messages.
* Plain: ``{"custom_id", "prompt", "model"?, "system"?, "max_tokens"?, "temperature"?, ...}``
  (or ``messages`` instead of ``prompt``).

A model is named as everywhere else (``workers/contract/catalog.py``): ``provider:model``, a route
alias, or a bare name of a model family (``gpt-4o-mini`` -> ``openai:gpt-4o-mini``,
``claude-sonnet-4-5`` -> ``anthropic:claude-sonnet-4-5``), checked against the workers' catalog in
the validation pass.

Request parameters travel in each shape's own spelling: OpenAI's body fields that are job fields of
the same name (the contract's request parameters: ``response_format``, ``tool_choice``, ``stop``,
``top_p``, ``seed``, the penalties, ``logit_bias``, ``logprobs``, ``n`` ...), ``reasoning_effort``
and ``image_url`` parts; Anthropic ``tool_choice`` (``auto``/``any``/``tool``/``none``,
``disable_parallel_tool_use``), ``stop_sequences``, ``top_p``, ``metadata.user_id``, ``thinking``,
``output_config.format`` and ``image`` blocks; plain lines use the job's own field names.
A field we cannot honour is an error, not silently dropped; fields that change nothing for a
batch run (``stream``, ``store`` ...) are ignored. Errors carry the input line number and
a field path in the input's own terms (``body.messages[2].content``), so they can be fixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from workers.contract import CompletionJob, RequestParams
from workers.contract.capabilities import CapabilityError
from workers.contract.catalog import close_names

__all__ = ["CHAT_COMPLETIONS_URL", "LineError", "LineIssue", "ParsedLine", "parse_line"]

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
_MAX_CUSTOM_ID = 256

# body/params fields that have no effect on a batch run
_OPENAI_IGNORED = {"stream", "stream_options", "store", "service_tier"}
#: OpenAI body fields that are job fields of the same name and shape (the contract's request
#: parameters: one added there is taken here as it is)
_OPENAI_PARAMS = tuple(sorted(set(RequestParams.model_fields) - {"max_tokens", "temperature", "reasoning"}))
_OPENAI_KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "tools"}
_OPENAI_KNOWN |= {"metadata", "reasoning_effort", *_OPENAI_PARAMS} | _OPENAI_IGNORED
_ANTHROPIC_IGNORED = {"stream"}
_ANTHROPIC_KNOWN = {"model", "max_tokens", "messages", "system", "temperature", "tools", "tool_choice"}
_ANTHROPIC_KNOWN |= {"stop_sequences", "top_p", "metadata", "thinking", "output_config"} | _ANTHROPIC_IGNORED
#: Plain-line fields that are job fields as they are
_PLAIN_PARAMS: tuple[str, ...] = ("model", "max_tokens", "temperature", "metadata", "tenant", "fallbacks", "tools")
_PLAIN_PARAMS += ("max_repairs",)
_PLAIN_PARAMS += tuple(sorted(set(RequestParams.model_fields) - set(_PLAIN_PARAMS)))
#: A line's scheduling fields, next to ``custom_id`` in every format (the batch's ``--priority``,
#: ``bulk`` by default, ``--deadline`` and ``--via``, for a line without one).
_SCHEDULING = ("priority", "concurrency_key", "deadline_s", "batch")
_PLAIN_KNOWN = {"custom_id", "prompt", "messages", "system", *_PLAIN_PARAMS, *_SCHEDULING}
#: pydantic's names for the branches of a union in an error location (not input fields)
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list"}


@dataclass(frozen=True, slots=True)
class LineIssue:
    """One problem with one input line (the shape of an OpenAI Batch ``errors.data`` entry)."""

    line: int
    code: str
    message: str
    param: str | None = None
    custom_id: str | None = None
    #: 1-based column in the input line (JSON syntax errors)
    column: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        where += f", {self.param}" if self.param else ""
        return f"{where}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self), "param": self.param, "line": self.line}


class LineError(ValueError):
    def __init__(self, issues: list[LineIssue]) -> None:
        super().__init__("; ".join(str(i) for i in issues))
        self.issues = issues


@dataclass(slots=True)
class ParsedLine:
    line: int
    custom_id: str
    kind: Literal["openai", "anthropic", "plain"]
    job: CompletionJob


@dataclass(slots=True)
class _Draft:
    """A job being built, and where each of its fields came from in the input line."""

    line: int
    custom_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    #: job field -> input path (``max_tokens`` -> ``body.max_completion_tokens``)
    paths: dict[str, str] = field(default_factory=dict)
    #: job message index -> input path of the message it came from
    message_paths: list[str] = field(default_factory=list)
    issues: list[LineIssue] = field(default_factory=list)
    #: where the request fields live in this format (``body.``, ``params.`` or nothing)
    prefix: str = ""

    def issue(self, code: str, message: str, param: str | None = None) -> None:
        self.issues.append(LineIssue(self.line, code, message, param, self.custom_id))

    def set(self, name: str, value: Any, path: str) -> None:
        self.fields[name] = value
        self.paths[name] = path


def parse_line(raw: bytes | str, line: int, *, default_model: str | None = None) -> ParsedLine:
    """Parse and validate one input line; :class:`LineError` lists everything wrong with it."""
    try:
        # without the line's own newline, json's position is a column of this line (an error at
        # the end of a cut-off line is not "line 2 column 1")
        data = json.loads(raw.rstrip(b"\r\n") if isinstance(raw, bytes) else raw.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        issue = LineIssue(line, "invalid_json", f"not valid JSON: {exc.msg}", column=exc.colno)
        raise LineError([issue]) from None
    except ValueError as exc:  # not UTF-8
        raise LineError([LineIssue(line, "invalid_json", f"not valid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise LineError([LineIssue(line, "invalid_json", "a line must be a JSON object")])
    draft = _Draft(line)
    cid = data.get("custom_id")
    if cid is None:
        draft.issue("missing_custom_id", "custom_id is required", "custom_id")
    elif not isinstance(cid, str) or not cid or len(cid) > _MAX_CUSTOM_ID:
        draft.issue("invalid_custom_id", f"custom_id must be a string of 1-{_MAX_CUSTOM_ID} characters", "custom_id")
    else:
        draft.custom_id = cid
    if "params" in data:
        kind: Literal["openai", "anthropic", "plain"] = "anthropic"
        draft.prefix = "params."
        _from_anthropic(draft, data)
    elif {"body", "url", "method"} & data.keys():
        kind = "openai"
        draft.prefix = "body."
        _from_openai(draft, data)
    elif {"prompt", "messages"} & data.keys():
        kind = "plain"
        _from_plain(draft, data)
    else:
        close = [c for key in data for c in close_names(key, ["body", "params", "prompt", "messages"])]
        meant = f" (did you mean {close[0]!r}?)" if close else ""
        draft.issue(
            "unknown_format",
            "unrecognised line: expected 'body' (OpenAI Batch), 'params' (Anthropic Message Batches) or "
            f"'prompt'{meant}",
        )
        raise LineError(draft.issues)
    for name in _SCHEDULING:
        if data.get(name) is not None:
            draft.set(name, data[name], name)
    if "model" not in draft.fields:
        if default_model:
            draft.set("model", default_model, "--model")
        else:
            draft.issue("missing_model", "no model on the line and no --model given", f"{draft.prefix}model")
    metadata = draft.fields.get("metadata", {})
    if not isinstance(metadata, dict):
        draft.issue("invalid_value", "metadata must be an object of strings", draft.paths["metadata"])
    if draft.issues:
        raise LineError(draft.issues)
    assert draft.custom_id is not None
    draft.fields["metadata"] = {**metadata, "custom_id": draft.custom_id}
    try:
        job = CompletionJob.model_validate(draft.fields)
    except ValidationError as exc:
        raise LineError(_map_errors(draft, exc)) from None
    return ParsedLine(line, draft.custom_id, kind, job)


# --- the three formats ----------------------------------------------------------------------------


def _check_keys(draft: _Draft, obj: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in obj:
        if key not in known:
            close = close_names(key, known)
            meant = f" (did you mean {prefix}{close[0]}?)" if close else ""
            draft.issue("unsupported_field", f"{prefix}{key} is not supported by llmqueue{meant}", f"{prefix}{key}")


def _from_openai(draft: _Draft, data: dict[str, Any]) -> None:
    _check_keys(draft, data, {"custom_id", "method", "url", "body", *_SCHEDULING}, "")
    if data.get("method", "POST") != "POST":
        draft.issue("invalid_method", f"method must be POST, not {data.get('method')!r}", "method")
    if data.get("url") != CHAT_COMPLETIONS_URL:
        draft.issue("invalid_url", f"url must be {CHAT_COMPLETIONS_URL!r}, not {data.get('url')!r}", "url")
    body = data.get("body")
    if not isinstance(body, dict):
        draft.issue("missing_body", "body must be an object (the Chat Completions request)", "body")
        return
    _check_keys(draft, body, _OPENAI_KNOWN, "body.")
    for name in _OPENAI_PARAMS:
        if body.get(name) is not None:
            draft.set(name, body[name], f"body.{name}")
    if body.get("reasoning_effort") is not None:
        draft.set("reasoning", {"effort": body["reasoning_effort"]}, "body.reasoning_effort")
    if "model" in body:
        draft.set("model", body["model"], "body.model")
    for name in ("max_completion_tokens", "max_tokens", "temperature", "metadata"):
        if body.get(name) is not None:
            target = "max_tokens" if name == "max_completion_tokens" else name
            if target not in draft.fields:
                draft.set(target, body[name], f"body.{name}")
    if "tools" in body:
        tools = body["tools"]
        if isinstance(tools, list):
            tools = [_strip_strict(t) for t in tools]
        draft.set("tools", tools, "body.tools")
    messages = body.get("messages")
    if not isinstance(messages, list):
        draft.issue("missing_messages", "messages must be a list", "body.messages")
        return
    draft.fields["messages"] = [_openai_message(draft, m, f"body.messages[{i}]") for i, m in enumerate(messages)]
    draft.message_paths = [f"body.messages[{i}]" for i in range(len(messages))]


def _strip_strict(tool: Any) -> Any:
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict) and "strict" in tool["function"]:
        return {**tool, "function": {k: v for k, v in tool["function"].items() if k != "strict"}}
    return tool


def _openai_message(draft: _Draft, message: Any, path: str) -> Any:
    """Text-part arrays become one string (image parts stay parts); ``developer`` is ``system``."""
    if not isinstance(message, dict):
        return message
    out = dict(message)
    if out.get("role") == "developer":
        out["role"] = "system"
    content = out.get("content")
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if isinstance(part, dict) and kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif isinstance(part, dict) and kind == "image_url" and out.get("role") == "user":
                parts.append({"type": "image_url", "image_url": part.get("image_url")})
            else:
                draft.issue(
                    "unsupported_content",
                    f"only text (and, in user messages, image_url) content parts are supported, not {kind!r}",
                    f"{path}.content[{j}]",
                )
        texts_only = all(p["type"] == "text" for p in parts)
        out["content"] = "".join(p["text"] for p in parts) if texts_only else parts
    out.pop("refusal", None)
    return out


def _from_anthropic(draft: _Draft, data: dict[str, Any]) -> None:
    _check_keys(draft, data, {"custom_id", "params", *_SCHEDULING}, "")
    params = data["params"]
    if not isinstance(params, dict):
        draft.issue("missing_params", "params must be an object (the Messages request)", "params")
        return
    _check_keys(draft, params, _ANTHROPIC_KNOWN, "params.")
    _anthropic_params(draft, params)
    if "model" in params:
        draft.set("model", params["model"], "params.model")
    for name in ("max_tokens", "temperature"):
        if params.get(name) is not None:
            draft.set(name, params[name], f"params.{name}")
    if "tools" in params:
        draft.set("tools", _anthropic_tools(draft, params["tools"]), "params.tools")
    messages: list[Any] = []
    system = params.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _blocks_text(draft, system, "params.system")})
        draft.message_paths.append("params.system")
    raw = params.get("messages")
    if not isinstance(raw, list):
        draft.issue("missing_messages", "messages must be a list", "params.messages")
        return
    for i, message in enumerate(raw):
        path = f"params.messages[{i}]"
        for converted in _anthropic_message(draft, message, path):
            messages.append(converted)
            draft.message_paths.append(path)
    draft.fields["messages"] = messages


def _anthropic_params(draft: _Draft, params: dict[str, Any]) -> None:
    """Anthropic's spellings of the request parameters -> the job's fields."""
    choice = params.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        mapped: Any = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
        if kind == "tool":
            mapped = {"type": "function", "function": {"name": choice.get("name")}}
        if mapped is None:
            draft.issue("unsupported_value", "tool_choice type must be auto, any, tool or none", "params.tool_choice")
        else:
            draft.set("tool_choice", mapped, "params.tool_choice")
        if isinstance(choice, dict) and choice.get("disable_parallel_tool_use"):
            draft.set("parallel_tool_calls", False, "params.tool_choice.disable_parallel_tool_use")
    for name, target in (("stop_sequences", "stop"), ("top_p", "top_p")):
        if params.get(name) is not None:
            draft.set(target, params[name], f"params.{name}")
    metadata = params.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id") is not None:
        draft.set("user", metadata["user_id"], "params.metadata.user_id")
    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        draft.set("reasoning", {"budget_tokens": thinking.get("budget_tokens")}, "params.thinking")
    config = params.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict):
        schema = fmt.get("schema")
        draft.set(
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}},
            "params.output_config.format",
        )


def _anthropic_image(draft: _Draft, block: dict[str, Any], where: str) -> dict[str, Any] | None:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif isinstance(source, dict) and source.get("type") == "url":
        url = str(source.get("url"))
    else:
        draft.issue("unsupported_content", "an image block needs a base64 or url source", where)
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _blocks_text(draft: _Draft, content: Any, path: str) -> Any:
    if not isinstance(content, list):
        return content
    texts = []
    for j, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            draft.issue("unsupported_content", f"only text blocks are supported here, not {kind!r}", f"{path}[{j}]")
    return "".join(texts)


def _anthropic_message(draft: _Draft, message: Any, path: str) -> list[Any]:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return [message]
    role = message.get("role")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(message["content"]):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"{path}.content[{j}]"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "text":
            draft.issue("invalid_value", "a text block needs a string 'text'", f"{where}.text")
        elif kind == "image" and role == "user":
            image = _anthropic_image(draft, block, where)
            if image is not None:
                images.append(image)
        elif kind == "tool_use" and role == "assistant":
            arguments = json.dumps(block.get("input", {}), separators=(",", ":"))
            tool_calls.append({"id": block.get("id"), "function": {"name": block.get("name"), "arguments": arguments}})
        elif kind == "tool_result" and role == "user":
            content = _blocks_text(draft, block.get("content", ""), f"{where}.content")
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content})
        else:
            draft.issue("unsupported_content", f"content block {kind!r} is not supported in a {role!r} message", where)
    out: list[Any] = list(results)
    if images:
        out.append({"role": role, "content": [*({"type": "text", "text": t} for t in texts), *images]})
    elif texts or tool_calls or not results:
        converted: dict[str, Any] = {"role": role, "content": "".join(texts) if texts or not tool_calls else None}
        if tool_calls:
            converted["tool_calls"] = tool_calls
        out.append(converted)
    return out


def _anthropic_tools(draft: _Draft, tools: Any) -> Any:
    if not isinstance(tools, list):
        return tools
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or "name" not in tool:
            draft.issue("invalid_tool", "a tool needs a name (server tools are not supported)", f"params.tools[{i}]")
            continue
        function = {"name": tool["name"], "parameters": tool.get("input_schema", {"type": "object", "properties": {}})}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _from_plain(draft: _Draft, data: dict[str, Any]) -> None:
    _check_keys(draft, data, _PLAIN_KNOWN, "")
    for name in _PLAIN_PARAMS:
        if data.get(name) is not None:
            draft.set(name, data[name], name)
    messages: list[Any] = []
    if data.get("system") is not None:
        messages.append({"role": "system", "content": data["system"]})
        draft.message_paths.append("system")
    if "prompt" in data and "messages" in data:
        draft.issue("conflicting_fields", "give either prompt or messages, not both", "prompt")
    elif isinstance(data.get("prompt"), dict):  # a published prompt: {name, version|label, variables}
        draft.set("prompt", data["prompt"], "prompt")
        if messages or "messages" in data:
            draft.issue(
                "conflicting_fields", "a published prompt brings its own messages (no system/messages)", "prompt"
            )
        return
    elif "prompt" in data:
        if not isinstance(data["prompt"], str) or not data["prompt"]:
            draft.issue("invalid_prompt", "prompt must be a non-empty string", "prompt")
        messages.append({"role": "user", "content": data["prompt"]})
        draft.message_paths.append("prompt")
    elif isinstance(data["messages"], list):
        messages.extend(data["messages"])
        draft.message_paths.extend(f"messages[{i}]" for i in range(len(data["messages"])))
    else:
        draft.issue("missing_messages", "messages must be a list", "messages")
    draft.fields["messages"] = messages


# --- pydantic errors back to input paths ---------------------------------------------------------------


def _map_errors(draft: _Draft, exc: ValidationError) -> list[LineIssue]:
    issues = []
    seen: set[str | None] = set()
    for error in exc.errors(include_url=False):
        loc = [p for p in error["loc"] if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, CapabilityError) and not loc:  # the capability table names its field
            loc = [cause.field]
        param = _input_path(draft, loc)
        if param in seen and param is not None:
            continue  # one problem per field (a union reports each of its branches)
        seen.add(param)
        message = str(error["msg"]).removeprefix("Value error, ")
        issues.append(LineIssue(draft.line, "invalid_value", message, param, draft.custom_id))
    return issues


def _input_path(draft: _Draft, loc: list[Any]) -> str | None:
    if not loc:
        return None
    head, rest = loc[0], loc[1:]
    if head == "messages" and rest and isinstance(rest[0], int) and rest[0] < len(draft.message_paths):
        base, rest = draft.message_paths[rest[0]], rest[1:]
    else:
        base = draft.paths.get(str(head)) or _default_path(draft, str(head))
    return base + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


def _default_path(draft: _Draft, name: str) -> str:
    return f"{draft.prefix}{name}"
