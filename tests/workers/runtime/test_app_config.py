"""The worker app's Celery settings that matter for a job's cost (``workers/runtime/app.py``)."""

from __future__ import annotations

import threading

import gevent
from celery.backends.base import DisabledBackend

from workers.contract import TASK_NAME
from workers.runtime.app import create_app
from workers.settings import Settings


def test_every_job_shares_one_disabled_result_backend() -> None:
    # results are llmqueue's own (Redis); Celery's backend is the disabled one, and it is built once,
    # not once per thread (gevent makes every job a thread of its own)
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    task = app.tasks[TASK_NAME]
    seen: list[object] = [task.backend]
    thread = threading.Thread(target=lambda: seen.append(task.backend))
    thread.start()
    thread.join()
    seen += [g.value for g in gevent.joinall([gevent.spawn(lambda: task.backend) for _ in range(3)])]
    assert isinstance(seen[0], DisabledBackend)
    assert len({id(b) for b in seen}) == 1 and len(seen) == 5
