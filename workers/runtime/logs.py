"""Worker logging: one JSON object per line (``LLMQ_LOG_FORMAT=json``, the default off a terminal)
or plain text, always through the credential scrubber.

Each JSON line has ``ts``, ``level``, ``logger``, ``msg``, ``trace_id``/``span_id`` (the record's
own, set by the job observer, else the current span's) and the structured fields of the job and
decision lines (``event``, ``job_id``, ``model``, ``attempt``, ``backoff_s``...). Which job lines are
written at all is the observer's choice (``workers/jobs/observe.py``: per-trace sampling); Celery's
own per-task INFO lines (received, succeeded) are left out above ``DEBUG``, so that choice holds.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from celery.exceptions import Reject
from opentelemetry import trace

from workers.contract import redact
from workers.runtime.telemetry import RedactingFilter

__all__ = ["JsonFormatter", "QuietRejects", "configure_logging"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _clean(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        trace_id = getattr(record, "trace_id", None)
        span_id = getattr(record, "span_id", None)
        if trace_id is None:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
        if trace_id:
            out["trace_id"] = trace_id
            out["span_id"] = span_id
        fields = getattr(record, "llmq", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, _clean(value))
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str, separators=(",", ":"))


class QuietRejects(logging.Filter):
    """A job handed back to the queue is one line, without a traceback.

    The task hands a job back (a graceful shutdown's window ended before it did) by raising Celery's
    ``Reject(requeue=True)``, the one way to re-queue a late-acked message; Celery then logs
    ``Task llmq.run_job[<id>] reject requeue=True: handed back at shutdown`` at WARNING with the
    traceback of that ``raise`` (``celery/app/trace.py``, its log policy for ``Reject``). The
    traceback says nothing about the job and reads like a crash; the line stays, the traceback goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Reject):
            record.exc_info = None
            record.exc_text = None
        return True


class _LLMQHandler(logging.StreamHandler[IO[str]]):
    """Our root handler (configuring twice replaces it). Without an explicit stream it writes to
    whatever ``sys.stderr`` is at the time of each record (test runners swap it)."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow:
            self.stream = sys.stderr
        super().emit(record)


def configure_logging(
    fmt: str | None = None, *, level: int = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Install the worker's root handler (idempotent). ``fmt``: ``json``, ``text`` or None for
    JSON unless ``stream`` is a terminal."""
    if fmt is None:
        fmt = "text" if getattr(stream or sys.stderr, "isatty", lambda: False)() else "json"
    handler = _LLMQHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(RedactingFilter())
    handler.addFilter(QuietRejects())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LLMQHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    logging.getLogger("llmq").setLevel(min(level, logging.INFO))  # job and decision lines are INFO
    # Celery's own two INFO lines per task ("Task llmq.run_job[<id>] received", "... succeeded in
    # 1.07s: 'failed'") say less than the job's line, read as a success for a failed job, and are
    # never sampled: with LLMQ_LOG_SAMPLE=0.01 a worker still wrote two lines per job. Below DEBUG
    # they go; their warnings and errors (a rejected or crashed task) stay.
    for name in _CELERY_PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else logging.WARNING)
    return handler


#: The loggers of Celery's per-task INFO lines: the task received, and its return value.
_CELERY_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
