"""The one Celery task: validate the job, run the pipeline, re-queue when the pipeline says so.

Thin on purpose: everything that matters happens in :mod:`workers.jobs.pipeline`. A payload that does
not validate still ends with a stored failed result and an ``error`` event when it carries a
usable job id, so its consumers do not wait forever.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject
from pydantic import ValidationError

from workers.contract import TASK_NAME, CompletionJob, monitor_repr
from workers.runtime.broker import leave_for_restore, transport_for
from workers.runtime.state import LLMQCelery

__all__ = ["register_tasks"]

log = logging.getLogger("llmq.tasks")


def register_tasks(app: LLMQCelery) -> None:
    @app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        ignore_result=True,
        max_retries=None,
        shared=False,
        Request="workers.runtime.request:DecodedRequest",  # the body decoded once per message
    )
    def run_job(self: Task[[dict[str, Any]], str], job: dict[str, Any]) -> str:
        runner = app.llmq.runner()
        try:
            parsed = CompletionJob.model_validate(job)
        except ValidationError as exc:
            job_id = job.get("id") if isinstance(job, dict) else None
            log.error("rejected invalid job %r: %s", job_id, exc.errors(include_url=False)[:3])
            runner.reject_invalid(job_id, exc)
            return "invalid"
        except Exception as exc:  # not a ValidationError (a recursion limit...): still rejected, typed
            job_id = job.get("id") if isinstance(job, dict) else None
            log.error("rejected unreadable job %r: %s: %s", job_id, type(exc).__name__, str(exc)[:200])
            runner.reject_invalid(job_id, exc)
            return "invalid"
        # never delivered before (not restored, not a re-queue): the job is most likely untouched, and
        # its claim rides on its first event flush (JobRunner.run)
        request = self.request
        first = not request.retries and not (request.delivery_info or {}).get("redelivered")
        outcome = runner.run(parsed, first_delivery=first)
        if outcome.left_for_restore:
            # Redis refuses writes: the message goes back to the queue without one (RabbitMQ holds
            # its messages itself: a plain re-queue there)
            if transport_for(app.llmq.settings.broker_url or app.llmq.settings.redis_url) is None:
                raise Reject("Redis is full", requeue=True)
            leave_for_restore(str(self.request.id))
            return "left for restore: Redis is full"
        if outcome.handed_back:
            raise Reject("handed back at shutdown", requeue=True)
        if outcome.requeue_after_s is not None:
            # the re-sent message keeps Flower's short view of the job (no content)
            # (message options Celery passes on to apply_async; its stubs list only retry's own)
            shown: dict[str, Any] = (
                {} if runner.res.settings.monitor_content else {"argsrepr": monitor_repr(job), "kwargsrepr": "{}"}
            )
            raise self.retry(countdown=outcome.requeue_after_s, args=(job,), **shown)
        if outcome.skipped:
            return f"skipped: {outcome.skipped}"
        return outcome.result.status if outcome.result else "unknown"
