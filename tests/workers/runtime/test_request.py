"""The task request carries the body decoded once: the tracer runs it without a second ``json.loads``."""

from __future__ import annotations

import json
from typing import Any

from celery import Celery
from celery.app.trace import trace_task_ret
from kombu.message import Message

from workers.runtime.request import DecodedRequest

ARGS = ([{"id": "j1", "model": "m"}], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def test_the_request_holds_the_decoded_body_and_the_tracer_runs_it_as_is() -> None:
    app = Celery("t", broker="memory://", set_as_current=False)

    @app.task(name="t.echo", shared=False, Request=DecodedRequest)
    def echo(job: dict[str, Any]) -> str:
        return str(job["id"])

    app.finalize()
    message = Message(
        body=json.dumps(ARGS).encode(),
        content_type="application/json",
        content_encoding="utf-8",
        headers={"lang": "py", "task": "t.echo", "id": "task-1", "argsrepr": "", "kwargsrepr": ""},
        delivery_info={"exchange": "", "routing_key": "q"},
        properties={},
    )
    assert "args" not in message.payload  # protocol 2: what Celery's strategy decodes (and kombu caches)
    request = DecodedRequest(message, app=app, task=echo, hostname="w1")
    # decoded already: no content type, so the tracer (trace_task_ret, as fast_trace_task) takes the body as it is
    assert request.content_type is None and request.content_encoding is None
    assert list(request.body) == json.loads(json.dumps(ARGS))
    assert request.args == [{"id": "j1", "model": "m"}] and request.kwargs == {}
    retval = trace_task_ret("t.echo", "task-1", request.request_dict, request.body, None, None, app=app)
    assert retval[0] == 0 and "j1" in str(retval[1])  # not failed; the task saw its decoded job
