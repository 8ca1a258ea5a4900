"""Read a reply of any of the three wire formats into one normalized shape.

Used by the load generator (:mod:`simulator.loadtest`) to check what it got, and by tests. It is
deliberately independent of the renderers in :mod:`simulator.protocols` (it parses bytes the way
a client does) and tolerant: a broken line is counted in ``malformed``, not raised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reply", "parse_reply"]


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes
    #: The HTTP body arrived whole (no cut connection, no short body).
    complete: bool = True
    #: The protocol's own end marker was seen (``[DONE]``, ``message_stop``, ``done: true``).
    terminated: bool = False
    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finish: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: Error types (OpenAI/Anthropic) or messages (Ollama) seen inside a 200 stream.
    errors: list[str] = field(default_factory=list)
    #: Lines/events whose JSON did not parse.
    malformed: int = 0
    #: Anthropic: the keys of ``message_delta.usage``.
    delta_usage_keys: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def parse_reply(
    protocol: str, stream: bool, status: int, headers: dict[str, str], raw: bytes, complete: bool = True
) -> Reply:
    reply = Reply(status, {k.lower(): v for k, v in headers.items()}, raw, complete)
    if status != 200:
        return reply
    parser = {"openai": _openai, "anthropic": _anthropic, "ollama": _ollama}[protocol]
    if stream:
        parser(reply, _events(protocol, raw))
    else:
        parser(reply, [_loads(raw)])
    return reply


def _loads(data: bytes | str) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return _MALFORMED


_MALFORMED = object()


def _events(protocol: str, raw: bytes) -> list[object]:
    if protocol == "ollama":
        return [_loads(line) for line in raw.split(b"\n") if line.strip()]
    out: list[object] = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
                out.append("[DONE]" if data == b"[DONE]" else _loads(data))
    return out


def _openai(reply: Reply, events: list[object]) -> None:
    calls: dict[int, list[str]] = {}
    for ev in events:
        if ev is _MALFORMED:
            reply.malformed += 1
        elif ev == "[DONE]":
            reply.terminated = True
        elif isinstance(ev, dict) and "error" in ev:
            reply.errors.append(ev["error"].get("type") or ev["error"].get("message"))
        elif isinstance(ev, dict):
            reply.terminated = reply.terminated or ev.get("object") == "chat.completion"
            if ev.get("usage"):
                reply.prompt_tokens = ev["usage"]["prompt_tokens"]
                reply.completion_tokens = ev["usage"]["completion_tokens"]
            for choice in ev.get("choices") or []:
                part = choice.get("delta") or choice.get("message") or {}
                reply.text += part.get("content") or ""
                for i, tc in enumerate(part.get("tool_calls") or []):
                    entry = calls.setdefault(tc.get("index", i), ["", ""])
                    entry[0] = tc.get("function", {}).get("name") or entry[0]
                    entry[1] += tc.get("function", {}).get("arguments") or ""
                reply.finish = choice.get("finish_reason") or reply.finish
    reply.tool_calls = [(name, json.loads(args or "{}")) for _, (name, args) in sorted(calls.items())]


def _anthropic(reply: Reply, events: list[object]) -> None:
    blocks: dict[int, list[str]] = {}
    for ev in events:
        if not isinstance(ev, dict):
            reply.malformed += 1
            continue
        kind = ev.get("type")
        if kind in ("message", "message_start"):
            message = ev.get("message", ev)
            reply.prompt_tokens = message["usage"]["input_tokens"]
            for block in message.get("content") or []:
                if block["type"] == "text":
                    reply.text += block["text"]
                elif block["type"] == "tool_use":
                    reply.tool_calls.append((block["name"], block["input"]))
            if kind == "message":
                reply.finish, reply.terminated = message["stop_reason"], True
                reply.completion_tokens = message["usage"]["output_tokens"]
        elif kind == "content_block_start" and ev["content_block"]["type"] == "tool_use":
            blocks[ev["index"]] = [ev["content_block"]["name"], ""]
        elif kind == "content_block_delta":
            delta = ev["delta"]
            if delta["type"] == "text_delta":
                reply.text += delta["text"]
            elif delta["type"] == "input_json_delta":
                blocks[ev["index"]][1] += delta["partial_json"]
        elif kind == "message_delta":
            reply.finish = ev["delta"]["stop_reason"]
            usage = ev.get("usage") or {}
            reply.delta_usage_keys = list(usage)
            reply.completion_tokens = usage.get("output_tokens")
        elif kind == "message_stop":
            reply.terminated = True
        elif kind == "error":
            reply.errors.append(ev["error"]["type"])
    reply.tool_calls += [(name, json.loads(args) if args else {}) for _, (name, args) in sorted(blocks.items())]


def _ollama(reply: Reply, events: list[object]) -> None:
    for ev in events:
        if not isinstance(ev, dict):
            reply.malformed += 1
            continue
        if "error" in ev:
            reply.errors.append(ev["error"])
            continue
        message = ev.get("message") or {}
        reply.text += message.get("content") or ""
        for tc in message.get("tool_calls") or []:
            reply.tool_calls.append((tc["function"]["name"], tc["function"]["arguments"]))
        if ev.get("done"):
            reply.terminated = True
            reply.finish = ev.get("done_reason")
            reply.prompt_tokens = ev.get("prompt_eval_count")
            reply.completion_tokens = ev.get("eval_count")
