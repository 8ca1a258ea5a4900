"""The worker's Celery event dispatcher: a publish that retries a lost broker does so a bounded number of times.

Why. Celery's worker heartbeat (``worker-heartbeat``, every 2 s while events are on, for Flower) is
published with ``retry=True`` and no retry policy, which kombu reads as "retry forever, once a second"
(``Connection.ensure``), while holding the dispatcher's lock. With Redis gone, a heartbeat caught in
that loop held the lock for as long as Redis stayed away, and whatever closes the dispatcher under the
same lock waited with it: the consumer's restart after the lost connection, then a SIGTERM's
shutdown. Measured: a gevent worker whose Redis was stopped ignored SIGTERM for minutes in 4 runs of 6
(the others stopped within 2 s); with this dispatcher, 6 of 6 stopped within 5 s.

What. :class:`LLMQEventDispatcher` gives such publishes :data:`RETRY_POLICY` (three tries within about
1.5 s); a publish that still fails goes to the dispatcher's offline buffer, as Celery does with any
failed event, and is sent when the broker is back. Installed as the app's ``events_cls``
(``workers/runtime/state.py``).
"""

from __future__ import annotations

from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher

__all__ = ["RETRY_POLICY", "LLMQEventDispatcher", "LLMQEvents"]

#: What ``retry=True`` without a policy means for a worker event (kombu's ``ensure`` options).
RETRY_POLICY: dict[str, float] = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1.0}


class LLMQEventDispatcher(EventDispatcher):
    def _publish(
        self, event: Any, producer: Any, routing_key: str, retry: bool = False, retry_policy: Any = None, **kw: Any
    ) -> Any:
        if retry and not retry_policy:
            retry_policy = RETRY_POLICY
        # (celery-types does not declare the dispatcher's _publish)
        return super()._publish(event, producer, routing_key, retry=retry, retry_policy=retry_policy, **kw)  # type: ignore[misc]


class LLMQEvents(Events):
    dispatcher_cls = "workers.runtime.events:LLMQEventDispatcher"
