"""Batch input lines -> validated :class:`CompletionJob` s, with errors that name the field.

Three line shapes are accepted, told apart by their keys:

* OpenAI Batch: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``;
  a bare ``body.model`` is an OpenAI model (``gpt-4o-mini`` -> ``openai:gpt-4o-mini``).
* Anthropic Message Batches request entry: ``{"custom_id", "params": {...}}``; a bare
  ``params.model`` is an Anthropic model. ``system``, text blocks, ``tool_use`` and
  ``tool_result`` blocks are translated to OpenAI-style messages.
* Plain: ``{"custom_id", "prompt", "model"?, "system"?, "max_tokens"?, "temperature"?, ...}``
  (or ``messages`` instead of ``prompt``); ``model`` is an llmqueue model id or route alias.

A field we cannot honour is an error, not silently dropped; fields that change nothing for a
batch run (``stream``, ``user``, ``n: 1`` ...) are ignored. Errors carry the input line number and
a field path in the input's own terms (``body.messages[2].content``), so they can be fixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from workers.contract import CompletionJob

__all__ = ["CHAT_COMPLETIONS_URL", "LineError", "LineIssue", "ParsedLine", "parse_line"]

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
_PROVIDERS = ("openai:", "anthropic:", "ollama:")
_MAX_CUSTOM_ID = 256

# body/params fields that have no effect on a batch run
_OPENAI_IGNORED = {"stream", "stream_options", "user", "store", "service_tier", "parallel_tool_calls", "n"}
_OPENAI_KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "tools", "tool_choice"}
_OPENAI_KNOWN |= {"metadata"} | _OPENAI_IGNORED
_ANTHROPIC_IGNORED = {"stream", "metadata"}
_ANTHROPIC_KNOWN = {"model", "max_tokens", "messages", "system", "temperature", "tools", "tool_choice"}
_ANTHROPIC_KNOWN |= _ANTHROPIC_IGNORED
_PLAIN_KNOWN = {"custom_id", "prompt", "messages", "model", "system", "max_tokens", "temperature", "metadata"}
_PLAIN_KNOWN |= {"tenant", "fallbacks"}


@dataclass(frozen=True, slots=True)
class LineIssue:
    """One problem with one input line (the shape of an OpenAI Batch ``errors.data`` entry)."""

    line: int
    code: str
    message: str
    param: str | None = None
    custom_id: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.param}" if self.param else "")
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
        data = json.loads(raw)
    except ValueError as exc:
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
        draft.issue(
            "unknown_format",
            "unrecognised line: expected 'body' (OpenAI Batch), 'params' (Anthropic Message Batches) or 'prompt'",
        )
        raise LineError(draft.issues)
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
            draft.issue("unsupported_field", f"{prefix}{key} is not supported by llmqueue", f"{prefix}{key}")


def _provider_model(value: Any, provider: str) -> Any:
    if isinstance(value, str) and value and not value.startswith(_PROVIDERS):
        return f"{provider}:{value}"
    return value


def _from_openai(draft: _Draft, data: dict[str, Any]) -> None:
    _check_keys(draft, data, {"custom_id", "method", "url", "body"}, "")
    if data.get("method", "POST") != "POST":
        draft.issue("invalid_method", f"method must be POST, not {data.get('method')!r}", "method")
    if data.get("url") != CHAT_COMPLETIONS_URL:
        draft.issue("invalid_url", f"url must be {CHAT_COMPLETIONS_URL!r}, not {data.get('url')!r}", "url")
    body = data.get("body")
    if not isinstance(body, dict):
        draft.issue("missing_body", "body must be an object (the Chat Completions request)", "body")
        return
    _check_keys(draft, body, _OPENAI_KNOWN, "body.")
    if body.get("n", 1) != 1:
        draft.issue("unsupported_value", "only n=1 is supported", "body.n")
    if body.get("tool_choice", "auto") not in ("auto", None):
        draft.issue("unsupported_value", "only tool_choice 'auto' is supported", "body.tool_choice")
    if "model" in body:
        draft.set("model", _provider_model(body["model"], "openai"), "body.model")
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
    """Text-part arrays become one string; ``developer`` is ``system``; the rest is validated later."""
    if not isinstance(message, dict):
        return message
    out = dict(message)
    if out.get("role") == "developer":
        out["role"] = "system"
    content = out.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                draft.issue(
                    "unsupported_content",
                    f"only text content parts are supported, not {kind!r}",
                    f"{path}.content[{j}]",
                )
        out["content"] = "".join(texts)
    out.pop("refusal", None)
    return out


def _from_anthropic(draft: _Draft, data: dict[str, Any]) -> None:
    _check_keys(draft, data, {"custom_id", "params"}, "")
    params = data["params"]
    if not isinstance(params, dict):
        draft.issue("missing_params", "params must be an object (the Messages request)", "params")
        return
    _check_keys(draft, params, _ANTHROPIC_KNOWN, "params.")
    choice = params.get("tool_choice")
    if choice is not None and not (isinstance(choice, dict) and choice.get("type") == "auto"):
        draft.issue("unsupported_value", "only tool_choice {'type': 'auto'} is supported", "params.tool_choice")
    if "model" in params:
        draft.set("model", _provider_model(params["model"], "anthropic"), "params.model")
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
    tool_calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(message["content"]):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"{path}.content[{j}]"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "text":
            draft.issue("invalid_value", "a text block needs a string 'text'", f"{where}.text")
        elif kind == "tool_use" and role == "assistant":
            arguments = json.dumps(block.get("input", {}), separators=(",", ":"))
            tool_calls.append({"id": block.get("id"), "function": {"name": block.get("name"), "arguments": arguments}})
        elif kind == "tool_result" and role == "user":
            content = _blocks_text(draft, block.get("content", ""), f"{where}.content")
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content})
        else:
            draft.issue("unsupported_content", f"content block {kind!r} is not supported in a {role!r} message", where)
    out: list[Any] = list(results)
    if texts or tool_calls or not results:
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
    for name in ("model", "max_tokens", "temperature", "metadata", "tenant", "fallbacks"):
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
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        param = _input_path(draft, loc)
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
