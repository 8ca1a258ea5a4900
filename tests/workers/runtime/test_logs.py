"""The worker's log handler: JSON lines with the current trace id, through the scrubber."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from workers.runtime.logs import configure_logging


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    root.handlers = saved
    root.setLevel(level)


def test_json_lines_carry_the_current_trace_and_no_secret(root_handlers: None) -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    configure_logging("json", stream=stream)  # idempotent: one handler, one line per record
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("process llmq") as span:
        logging.getLogger("llmq.test").warning("upstream said %s", "Authorization: Bearer sk-abcdefghijklmnop1234")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and record["logger"] == "llmq.test"
    assert record["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "sk-abcdefghijklmnop1234" not in line and "[redacted]" in record["msg"]


def test_text_format_and_info_lines_of_llmq(root_handlers: None) -> None:
    stream = io.StringIO()
    configure_logging("text", level=logging.WARNING, stream=stream)
    logging.getLogger("llmq.jobs").info("job j1 succeeded")
    logging.getLogger("other").info("not shown")
    assert stream.getvalue().splitlines()[-1].endswith("INFO llmq.jobs: job j1 succeeded")
    assert "not shown" not in stream.getvalue()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_job_handed_back_is_one_line_without_a_traceback(root_handlers: None, fmt: str) -> None:
    """What Celery logs when the task raises ``Reject`` (a job handed back at shutdown), produced by
    Celery's own code: the line naming the job stays, the traceback of the ``raise`` goes."""
    from celery import Celery
    from celery.app.task import Context
    from celery.app.trace import TraceInfo
    from celery.exceptions import Reject

    stream = io.StringIO()
    configure_logging(fmt, stream=stream)
    app = Celery("t", set_as_current=False)

    @app.task(name="llmq.run_job", shared=False)
    def run_job() -> None: ...

    request = Context(id="job-7", hostname="w@h", args=[], kwargs={})
    try:
        raise Reject("handed back at shutdown", requeue=True)
    except Reject:
        TraceInfo("REJECTED").handle_reject(run_job, request)
    (line,) = stream.getvalue().splitlines()
    assert "Traceback" not in line and "raise Reject" not in line
    assert "llmq.run_job[job-7]" in line and "handed back at shutdown" in line
    if fmt == "json":
        record = json.loads(line)
        assert record["level"] == "warning" and "exc" not in record
    # other errors keep their traceback
    try:
        raise ValueError("a bug")
    except ValueError:
        logging.getLogger("celery.app.trace").exception("Task failed")
    assert "Traceback" in stream.getvalue() or '"exc":' in stream.getvalue()


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_celerys_per_task_lines_go_unless_debugging(root_handlers: None, level: int) -> None:
    """Celery's "received" and "succeeded in ...: 'failed'" lines, through Celery's own code, are
    left out at INFO (the job's sampled line says more); at DEBUG they stay. Their warnings and
    errors always stay."""
    from celery import Celery
    from celery.app.task import Context
    from celery.app.trace import TraceInfo, info
    from celery.exceptions import Reject

    stream = io.StringIO()
    configure_logging("text", level=level, stream=stream)
    app = Celery("t", set_as_current=False)

    @app.task(name="llmq.run_job", shared=False)
    def run_job() -> None: ...

    info("Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
         {"name": "llmq.run_job", "id": "job-1", "runtime": 1.0, "return_value": "'failed'"})  # fmt: skip
    logging.getLogger("celery.worker.strategy").info("Task llmq.run_job[job-1] received")
    try:
        raise Reject("handed back at shutdown", requeue=True)
    except Reject:
        TraceInfo("REJECTED").handle_reject(run_job, Context(id="job-2", hostname="w@h", args=[], kwargs={}))
    lines = stream.getvalue().splitlines()
    per_task = [line for line in lines if "succeeded in" in line or "received" in line]
    assert len(per_task) == (2 if level == logging.DEBUG else 0), lines
    assert sum("handed back at shutdown" in line for line in lines) == 1, lines
