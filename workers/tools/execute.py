"""Running tool calls: each handler on a thread (or in a process) of its own, with a timeout and a cancel signal.

:func:`start` launches one validated call and returns a :class:`RunningCall`; the tool loop waits
on a turn's calls together (one :class:`threading.Event` wakes it whenever any of them ends) and
stops waiting for a call at its timeout. A timed-out or cancelled call gets its
:class:`~workers.tools.registry.CancelToken` set; a handler that ignores it is left to finish on
its own thread (a daemon), or killed when it runs in a process of its own (its tool's
``isolation``, ``workers/tools/isolation.py``), while the job goes on with an error result. What a
handler returns or raises is rendered to text, scrubbed of credentials and capped before it goes
anywhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from pydantic import BaseModel

from workers.contract import redact
from workers.tools.isolation import run_in_os_thread, run_in_process, run_in_thread
from workers.tools.registry import CancelToken, ToolCancelledError, ToolSpec

__all__ = ["MAX_ERROR_CHARS", "RunningCall", "cap_text", "render_error", "render_value", "start"]

#: Error messages fed back to the model (and into events) are cut to this many characters.
MAX_ERROR_CHARS = 2000


def cap_text(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, saying how much was cut."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    note = f"... [truncated {len(data) - max_bytes} bytes]"
    keep = max(0, max_bytes - len(note.encode()))
    return data[:keep].decode("utf-8", "ignore") + note


def render_value(value: Any, max_bytes: int) -> str:
    """A handler's return value as the text of a tool message (redacted, capped)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, BaseModel):
        text = value.model_dump_json()
    else:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return cap_text(redact(text), max_bytes)


def render_error(exc: BaseException) -> str:
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return cap_text(redact(text), MAX_ERROR_CHARS)


class RunningCall:
    """One handler running where its tool's isolation puts it (``workers/tools/isolation.py``)."""

    def __init__(self, spec: ToolSpec, args: dict[str, Any], *, timeout_s: float, clock: Callable[[], float]) -> None:
        self.spec = spec
        self.args = args
        self.token = CancelToken()
        self.started = clock()
        self.deadline = self.started + timeout_s
        self.timeout_s = timeout_s
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    @property
    def cancelled_by_handler(self) -> bool:
        return isinstance(self.error, ToolCancelledError)


def start(
    spec: ToolSpec,
    args: dict[str, Any],
    *,
    timeout_s: float,
    wake: threading.Event,
    clock: Callable[[], float] = time.monotonic,
    context: Context | None = None,
) -> RunningCall:
    """Start ``spec``'s handler with ``args`` where its isolation says; ``wake`` is set when it ends.

    ``context`` (an OpenTelemetry context, e.g. one holding the call's ``execute_tool`` span) is
    attached on the handler's thread, so spans the handler starts are children of the call's span
    (not in a child process: its spans would have nowhere to go)."""
    call = RunningCall(spec, args, timeout_s=timeout_s, clock=clock)

    def done(value: Any, error: BaseException | None) -> None:
        call.value, call.error = value, error
        call.finished.set()
        wake.set()

    if spec.isolation == "process":
        run_in_process(spec, dict(args), call.token, done)
        return call
    kwargs = dict(args)
    if spec.cancel_param:
        kwargs[spec.cancel_param] = call.token

    def invoke() -> Any:
        attached = otel_context.attach(context) if context is not None else None
        try:
            return spec.handler(**kwargs)
        finally:
            if attached is not None:
                otel_context.detach(attached)

    run = run_in_os_thread if spec.isolation == "thread" else run_in_thread
    run(invoke, done, f"llmq-tool-{spec.name}")
    return call
