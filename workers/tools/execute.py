"""Running tool calls: each handler in its own thread, with a timeout and a cancel signal.

:func:`start` launches one validated call and returns a :class:`RunningCall`; the tool loop waits
on a turn's calls together (one :class:`threading.Event` wakes it whenever any of them ends) and
stops waiting for a call at its timeout. A timed-out or cancelled call gets its
:class:`~workers.tools.registry.CancelToken` set; a handler that ignores it is left to finish on
its own thread (a daemon), while the job goes on with an error result. What a handler returns or
raises is rendered to text, scrubbed of credentials and capped before it goes anywhere.
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
    """One handler running on its own thread."""

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

    def _run(self, wake: threading.Event, context: Context | None = None) -> None:
        kwargs = dict(self.args)
        if self.spec.cancel_param:
            kwargs[self.spec.cancel_param] = self.token
        attached = otel_context.attach(context) if context is not None else None
        try:
            self.value = self.spec.handler(**kwargs)
        except BaseException as exc:  # a handler's failure is a tool result, never a dead job
            self.error = exc
        finally:
            if attached is not None:
                otel_context.detach(attached)
            self.finished.set()
            wake.set()

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
    """Start ``spec``'s handler with ``args`` on a daemon thread; ``wake`` is set when it ends.

    ``context`` (an OpenTelemetry context, e.g. one holding the call's ``execute_tool`` span) is
    attached on that thread, so spans the handler starts are children of the call's span."""
    call = RunningCall(spec, args, timeout_s=timeout_s, clock=clock)
    thread = threading.Thread(target=call._run, args=(wake, context), name=f"llmq-tool-{spec.name}", daemon=True)
    thread.start()
    return call
