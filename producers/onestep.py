"""A submit in one round trip: the job registered and its message queued by one script.

Why. A submit was two round trips (the registration, then Celery's ``send_task`` through the
scheduling transport) and ~0.45 ms of Celery and kombu Python building the same message each time:
a producer queueing a batch started the worker's 200th slot ~0.25 s after its first (the benchmark's
ramp, ``bench/queue_timeline.py``). With the queue in the client's own Redis (the default), the
message is built here (``workers/connections/jobmessage.py``, the same bytes ``send_task`` writes)
and ``lua/submit.lua`` registers and queues it in one step: a refused registration queues nothing,
a duplicate id queues nothing, and the same submit repeated after a lost reply (a restart or a
fail-over ridden out, known by the call's nonce) neither queues it twice nor calls it a duplicate.

When. Only for the jobs and settings ``send_task`` would send this plain way (:meth:`OneStep.usable`):
the queue in the client's Redis, job content not shown to monitors (``LLMQ_MONITOR_CONTENT``),
``task-sent`` events off or batched, no receiver on Celery's publish signals, not called from inside
a Celery task (Celery would make it that task's child), ``send_task`` not wrapped by another library
(tracing integrations do, to add their headers or spans). Everything else takes ``send_task``. The
client's Celery configuration is read once: routes or compression set on ``client.celery`` later
are not applied to one-step messages. (Celery would also declare the queue's binding,
``_kombu.binding.<queue>``, at a client's first send: nothing reads it for a job, whose message goes
to the anonymous exchange; a worker declares its own.)
"""

from __future__ import annotations

import os
from typing import Any

from celery import signals
from celery._state import get_current_worker_task
from celery.utils.nodenames import anon_nodename
from kombu.utils.json import dumps
from redis.typing import EncodableT

from workers.connections.jobmessage import job_message
from workers.connections.schedule import SUBMIT, script
from workers.contract import TASK_NAME, CompletionJob, monitor_repr
from workers.contract.schedule import SCHED_HEADER, sched_header

__all__ = ["SUBMIT_LUA", "OneStep"]

SUBMIT_LUA = script(SUBMIT)

#: Celery's publish signals: a receiver on any of them expects ``send_task`` to fire it.
_PUBLISH_SIGNALS = (signals.before_task_publish, signals.after_task_publish, signals.task_sent)


def _send_task_wrapped(celery: Any) -> bool:
    """Whether something wraps ``send_task``, on the app or on Celery's class (tracing integrations do,
    to add their headers or spans: ``functools.wraps`` or ``wrapt`` leave ``__wrapped__``): it expects
    every job to go through it."""
    if "send_task" in vars(celery):
        return True
    send_task = type(celery).send_task
    return hasattr(send_task, "__wrapped__") or getattr(send_task, "__module__", "") != "celery.app.base"


class OneStep:
    """Builds the one-step submit's script arguments for a client of ``queue``."""

    def __init__(self, celery: Any, queue: str, *, enabled: bool) -> None:
        self._celery = celery
        self._queue = queue
        #: The settings allow it (see the module's "When").
        self.enabled = enabled
        self._origin: tuple[int, str] | None = None

    def usable(self, job: CompletionJob) -> bool:
        """Whether ``job`` (not for the provider batch lane: the caller checks) is submitted in one step."""
        if not self.enabled:
            return False
        if any(signal.receivers for signal in _PUBLISH_SIGNALS) or _send_task_wrapped(self._celery):
            return False
        return get_current_worker_task() is None

    def script_args(self, job: CompletionJob, register_args: list[EncodableT]) -> tuple[list[EncodableT], str]:
        """The args of ``lua/submit.lua`` (its keys are the registration's): the registration's
        (``ClientCore.register_args``), then the message as kombu serializes it, its class and the
        queue; and the message's ``argsrepr``, for its ``task-sent`` event (``ClientCore.announce_sent``)."""
        payload = job.model_dump(mode="json", exclude_none=True)
        argsrepr = monitor_repr(payload)
        message = job_message(
            [payload],
            task_id=job.id,
            task_name=TASK_NAME,
            queue=self._queue,
            extra_headers={SCHED_HEADER: sched_header(job.priority, job.tenant, job.concurrency_key, job.submitted_at)},
            argsrepr=argsrepr,
            kwargsrepr="{}",
            origin=self._nodename(),
            reply_to=self._celery.thread_oid,
        )
        nonce = message["properties"]["delivery_tag"]  # this call's, the same in each of its tries
        return [*register_args, dumps(message), job.priority, self._queue, nonce], argsrepr

    def _nodename(self) -> str:
        """Celery's ``anon_nodename()`` (``gen<pid>@<host>``), made once per process."""
        pid = os.getpid()
        if self._origin is None or self._origin[0] != pid:
            self._origin = (pid, anon_nodename())
        return self._origin[1]
