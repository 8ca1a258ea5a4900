"""Queueing an ended job's webhook delivery, inside its terminal write (``workers/jobs/store.py``).

The delivery itself happens later, off the job's path, in every worker process's deliverer
(``workers/runtime/webhooks.py``): a job never waits for a receiver. Queued in the terminal write,
a delivery exists exactly when the job's ending does, and its body is fixed then (every attempt
sends the same bytes under the same ``webhook-id``). Wire format: ``workers/contract/webhooks.py``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from workers.contract import CompletionJob, JobKeys
from workers.contract.webhooks import DUE_KEY, message_id
from workers.jobs.events import Write
from workers.routes import WebhooksConfig

__all__ = ["WebhookQueue", "webhook_body"]


def webhook_body(status: str, result_json: str, at: float) -> str:
    """The delivery's JSON body around the stored result's JSON (no second serialization)."""
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")
    return f'{{"type":"job.{status}","timestamp":"{stamp}","data":{result_json}}}'


class WebhookQueue:
    """Decides whether an ended job has a webhook (its own, or its tenant's) and queues the delivery."""

    def __init__(self, config: WebhooksConfig, *, keep_s: int, clock: Callable[[], float] = time.time) -> None:
        self._tenants = dict(config.tenants)
        #: The delivery record and its log outlive the retry window by the result's TTL.
        self._keep_s = int(config.max_age_s) + keep_s
        self._clock = clock

    def target(self, job: CompletionJob) -> str | None:
        return job.webhook or self._tenants.get(job.tenant)

    def writes(self, keys: JobKeys, job: CompletionJob, status: str, result_json: str) -> list[Write]:
        target = self.target(job)
        if target is None:
            return []
        now = self._clock()
        record: dict[str, str | int | float] = {
            "target": target,
            "msg_id": message_id(job.id),
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "next_at": now,
            "body": webhook_body(status, result_json, now),
        }
        fields: list[str | int | float] = [x for pair in record.items() for x in pair]
        return [
            ("HSET", keys.webhook, *fields),
            ("EXPIRE", keys.webhook, self._keep_s),
            ("ZADD", DUE_KEY, now, job.id),
        ]
