"""What the simulator reads from a request beyond the prompt, and the JSON it answers with.

Each protocol's ``parse`` fills a :class:`~simulator.request.RequestParams` from its own fields (OpenAI
``response_format``/``tool_choice``/``stop``, Anthropic ``output_config``/``tool_choice``/
``stop_sequences``, Ollama ``format``/``options.stop``); the app then plans the answer the same way
for all three: a JSON document valid for the requested schema (:func:`sample`), cut at the first
stop sequence, or a forced tool call. The ``badjson`` fault answers invalid JSON instead, and
``refusal`` a refusal, so that validation, repair and refusal handling can be exercised.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from simulator.request import ParsedRequest, RequestError, RequestParams
from simulator.script import Fault, Script, ToolCall

__all__ = [
    "BAD_JSON",
    "THINKING",
    "anthropic_params",
    "cut_at_stop",
    "gemini_sampling",
    "json_tokens",
    "ollama_params",
    "openai_params",
    "openai_sampling",
    "plan_params",
    "sample",
    "stop_sequences",
    "token_logprobs",
]

#: What the ``badjson`` fault answers: not JSON at all.
BAD_JSON = '{"answer": "the queue runs every job once'
REFUSAL = "I'm sorry, but I can't help with that request."
#: What the model "thinks" when extended thinking is on (a signed ``thinking`` block).
THINKING = "Let me think about this step by step before I answer."


def _resolve(schema: dict[str, object], root: dict[str, object]) -> dict[str, object]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: object = root
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}
    return schema


def sample(schema: object, text: str = "simulated", root: object = None, depth: int = 0) -> object:
    """A value valid for ``schema`` (the JSON Schema subset structured outputs use)."""
    if not isinstance(schema, dict) or depth > 12:
        return {}
    top = root if isinstance(root, dict) else schema
    schema = _resolve(schema, top)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return sample(options[0], text, top, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties")
        out: dict[str, object] = {}
        if isinstance(props, dict):
            for name, spec in props.items():
                out[name] = sample(spec, text, top, depth + 1)
        return out
    if kind == "array":
        min_items, max_items = schema.get("minItems"), schema.get("maxItems")
        count = max(1, int(min_items) if isinstance(min_items, int | float | str) and min_items else 1)
        if isinstance(max_items, int):
            count = min(count, max_items)
        return [sample(schema.get("items"), text, top, depth + 1) for _ in range(count)]
    if kind == "integer":
        minimum = schema.get("minimum")
        return int(minimum) if isinstance(minimum, int | float) else 42
    if kind == "number":
        minimum = schema.get("minimum")
        return float(minimum) if isinstance(minimum, int | float) else 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    value = text.strip()[:40] or "simulated"
    least = schema.get("minLength")
    if isinstance(least, int) and len(value) < least:
        value = value.ljust(least, "x")
    most = schema.get("maxLength")
    if isinstance(most, int):
        value = value[:most]
    return value


def json_tokens(value: object, *, size: int = 8) -> tuple[str, ...]:
    """``value`` as JSON text in small pieces, so a structured answer still streams."""
    text = json.dumps(value, ensure_ascii=False)
    return tuple(text[i : i + size] for i in range(0, len(text), size)) or ("{}",)


def cut_at_stop(tokens: tuple[str, ...], stop: list[str]) -> tuple[tuple[str, ...], bool]:
    """The tokens before the first stop sequence (which is not included), and whether one was hit."""
    if not stop:
        return tokens, False
    text = "".join(tokens)
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut < 0:
        return tokens, False
    out: list[str] = []
    used = 0
    for token in tokens:
        if used + len(token) >= cut:
            if cut > used:
                out.append(token[: cut - used])
            break
        out.append(token)
        used += len(token)
    return tuple(out), True


# --- reading each wire format's parameters -------------------------------------------------------


def _error(message: str) -> ValueError:
    return RequestError(message)


def stop_sequences(value: object, name: str, limit: int | None) -> list[str]:
    """A request's stop sequences (a string or a list of them; at most ``limit``), checked as the real APIs do."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise _error(f"{name}: must be a string or an array of non-empty strings")
    if limit is not None and len(items) > limit:
        raise _error(f"{name}: at most {limit} sequences")
    return list(items)


def _named(tool: object, names: list[str], where: str) -> str:
    if not isinstance(tool, str) or tool not in names:
        raise _error(f"{where}: tool {tool!r} is not among the request's tools")
    return tool


def _messages(payload: dict[str, object]) -> list[object]:
    messages = payload.get("messages")
    return messages if isinstance(messages, list) else []


def openai_params(payload: dict[str, object], tool_names: list[str]) -> RequestParams:
    params = RequestParams(stop=stop_sequences(payload.get("stop"), "stop", 4))
    fmt = payload.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            params.schema = {"type": "object"}
        elif fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not spec.get("name"):
                raise _error("response_format.json_schema.name: Field required")
            params.schema = spec.get("schema") or {"type": "object"}
    choice = payload.get("tool_choice")
    if choice is not None and not tool_names:
        raise _error("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.")
    if payload.get("parallel_tool_calls") is not None and not tool_names:
        raise _error("Invalid value for 'parallel_tool_calls': only allowed when 'tools' are specified.")
    if choice == "required":
        params.tool_required = "*"
    elif isinstance(choice, dict):
        fn = choice.get("function")
        params.tool_required = _named(fn.get("name") if isinstance(fn, dict) else None, tool_names, "tool_choice")
    for m in _messages(payload):
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part.get("image_url", {}).get("url") if isinstance(part.get("image_url"), dict) else None
                if not isinstance(url, str) or not url.startswith(("https://", "http://", "data:image/")):
                    raise _error("messages: image_url.url must be an http(s) or data:image URL")
                params.images += 1
    openai_sampling(payload, params)
    return params


def _number(payload: dict[str, object], name: str, low: float, high: float) -> None:
    value = payload.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _error(f"Invalid '{name}': expected a number from {low:g} to {high:g}.")


def _count(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _error(f"Invalid '{name}': expected an integer from {low} to {high}.")
    return value


def openai_sampling(payload: dict[str, object], params: RequestParams) -> None:
    """``n``, ``logprobs``/``top_logprobs``, ``logit_bias`` and the penalties, checked as OpenAI does."""
    for name in ("presence_penalty", "frequency_penalty"):
        _number(payload, name, -2.0, 2.0)
    bias = payload.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, int) and -100 <= v <= 100 for k, v in bias.items()
        ):
            raise _error("Invalid 'logit_bias': token ids (strings of digits) to integers from -100 to 100.")
    if payload.get("n") is not None:
        params.answers = _count(payload["n"], "n", 1, 128)
    top = payload.get("top_logprobs")
    if payload.get("logprobs"):
        params.logprobs = 0 if top is None else _count(top, "top_logprobs", 0, 20)
    elif top is not None:
        raise _error("Invalid value for 'top_logprobs': 'logprobs' must be set to true.")


def gemini_sampling(config: dict[str, object], params: RequestParams) -> None:
    """``candidateCount``, ``responseLogprobs``/``logprobs`` and the penalties of a ``generationConfig``."""
    for name in ("presencePenalty", "frequencyPenalty"):
        _number(config, name, -2.0, 2.0)
    if config.get("candidateCount") is not None:
        params.answers = _count(config["candidateCount"], "generationConfig.candidateCount", 1, 8)
    top = config.get("logprobs")
    if config.get("responseLogprobs"):
        params.logprobs = 0 if top is None else _count(top, "generationConfig.logprobs", 0, 20)
    elif top is not None:
        raise _error("logprobs is only valid if responseLogprobs is true.")


def token_logprobs(tokens: Sequence[str], top: int) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """Made-up but stable log probabilities of an answer's tokens: each token's, and ``top`` likeliest
    at its position (the token itself first)."""
    out = []
    for i, token in enumerate(tokens):
        logprob = -round(0.01 * (i % 9 + 1), 4)
        tops = [(token, logprob)] + [(f"{token}~{j}", round(logprob - j, 4)) for j in range(1, top)]
        out.append((token, logprob, tops[:top]))
    return out


def anthropic_params(payload: dict[str, object], tool_names: list[str], max_tokens: int) -> RequestParams:
    params = RequestParams(stop=stop_sequences(payload.get("stop_sequences"), "stop_sequences", None))
    config = payload.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise _error("output_config.format: expected {type: json_schema, schema: {...}}")
        params.schema = fmt["schema"]
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") == "any":
            params.tool_required = "*"
        elif choice.get("type") == "tool":
            params.tool_required = _named(choice.get("name"), tool_names, "tool_choice.name")
        elif choice.get("type") not in ("auto", "none"):
            raise _error("tool_choice.type: must be auto, any, tool or none")
    thinking = payload.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024 or budget >= max_tokens:
            raise _error("thinking.budget_tokens: must be >= 1024 and less than max_tokens")
        if payload.get("temperature") not in (None, 1, 1.0):
            raise _error("temperature may only be set to 1 when thinking is enabled")
        if params.tool_required is not None:
            raise _error("Thinking may not be enabled when tool_choice forces tool use.")
        params.thinking = True
    for m in _messages(payload):
        content = m.get("content") if isinstance(m, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "image":
                source = block.get("source")
                ok = isinstance(source, dict) and (
                    (source.get("type") == "base64" and source.get("media_type") and source.get("data"))
                    or (source.get("type") == "url" and source.get("url"))
                )
                if not ok:
                    raise _error("messages: image.source must be {type: base64, media_type, data} or {type: url, url}")
                params.images += 1
    return params


def ollama_params(payload: dict[str, object], options: dict[str, object]) -> RequestParams:
    params = RequestParams(stop=stop_sequences(options.get("stop"), "stop", None))
    fmt = payload.get("format")
    if fmt == "json":
        params.schema = {"type": "object"}
    elif isinstance(fmt, dict):
        params.schema = fmt
    elif fmt not in (None, ""):
        raise _error('invalid format: expected "json" or a JSON schema')
    for m in _messages(payload):
        images = m.get("images") if isinstance(m, dict) else None
        if images is None:
            continue
        if not isinstance(images, list) or not all(isinstance(i, str) and i and ":" not in i for i in images):
            raise _error("invalid image input: images must be base64 strings")
        params.images += len(images)
    top = payload.get("top_logprobs")
    if payload.get("logprobs"):
        params.logprobs = 0 if top is None else _count(top, "top_logprobs", 0, 20)
    return params


def plan_params(script: Script, req: ParsedRequest, fault: Fault) -> Script:
    """Shape the planned answer by the request's parameters (and the ``badjson``/``refusal`` faults)."""
    params = req.params
    if fault.kind == "filter":  # the provider's filter stops the answer halfway
        script.tokens, script.tool_calls, script.finish = tuple(script.tokens[: len(script.tokens) // 2]), [], "filter"
        return script
    if fault.kind == "refusal":
        script.tokens, script.tool_calls, script.refusal = (), [], REFUSAL
        script.finish = "refusal"
        if req.protocol_name != "openai":  # the others say it as text
            script.tokens = tuple(REFUSAL.split(" "))
            script.tokens = tuple(t if i == 0 else " " + t for i, t in enumerate(script.tokens))
            script.refusal = None
        return script
    if params.thinking:
        script.thinking = THINKING
    if params.tool_required is not None and req.tools and not script.tool_calls:
        wanted = params.tool_required
        tool = next((t for t in req.tools if t.name == wanted), req.tools[0])
        arguments = sample(tool.schema, req.prompt_text)
        if fault.kind == "badjson" or not isinstance(arguments, dict):
            arguments = {}
        script.tool_calls = [ToolCall(tool.name, arguments)]
        script.tokens = ()
        script.finish = "tool"
        return script
    if params.schema is not None and not script.tool_calls:
        if fault.kind == "badjson":
            script.tokens = tuple(BAD_JSON[i : i + 8] for i in range(0, len(BAD_JSON), 8))
        else:
            script.tokens = json_tokens(sample(params.schema, req.prompt_text))
        script.finish = "stop"
    tokens, hit = cut_at_stop(tuple(script.tokens), params.stop)
    if hit:
        script.tokens = tokens
        script.finish = "stop"
    return script
