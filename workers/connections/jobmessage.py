"""A job's queue message, byte for byte as Celery's ``send_task`` and kombu's Redis transport write it,
built without them: what a producer's one-step submit (``lua/submit.lua``) queues.

Why. ``Celery.send_task`` spent ~0.45 ms of Python per job building the same message each time
(routing, options merging, kombu's producer, declaration check, channel look-ups) before the
transport's one script call: about half of a producer's submit. The message itself is plain data:
Celery's task protocol 2 (``headers``, a ``(args, kwargs, embed)`` body) inside kombu's Redis
envelope (a base64 JSON body, ``properties`` with the delivery tag). A worker cannot tell the two
apart: ``tests/producers/test_one_step_submit.py`` compares this with what ``send_task`` queues
for the same jobs, field by field.

Only the shape a producer's jobs take: no ETA or countdown, no expiry, no parent task, no callbacks,
no publish-signal receivers; the producer takes ``send_task`` for anything else
(``producers/client.py``).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from kombu.utils.json import dumps

__all__ = ["EMBED", "job_message", "sent_event"]

#: The body's third item: no callbacks, errbacks, chain or chord.
EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def job_message(
    args: list[Any],
    *,
    task_id: str,
    task_name: str,
    queue: str,
    extra_headers: dict[str, Any],
    argsrepr: str,
    kwargsrepr: str,
    origin: str,
    reply_to: str,
    delivery_tag: str | None = None,
) -> dict[str, Any]:
    """The kombu message dict ``send_task(task_name, args=args, task_id=task_id, queue=queue,
    headers=extra_headers, argsrepr=..., kwargsrepr=...)`` hands the Redis channel's ``_put``.

    ``origin``: the sender's node name (Celery's ``anon_nodename()``); ``reply_to``: the app's
    ``thread_oid``. ``delivery_tag``: a fresh uuid4 unless given (tests)."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,
        "kwargsrepr": kwargsrepr,
        "origin": origin,
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    headers.update(extra_headers)
    body = dumps([args, {}, EMBED]).encode()
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag or str(uuid.uuid4()),
        },
    }


def sent_event(*, task_id: str, task_name: str, queue: str, argsrepr: str, kwargsrepr: str) -> dict[str, Any]:
    """The fields of the ``task-sent`` event ``send_task`` publishes with that message."""
    return {
        "uuid": task_id,
        "root_id": task_id,
        "parent_id": None,
        "name": task_name,
        "args": argsrepr,
        "kwargs": kwargsrepr,
        "retries": 0,
        "eta": None,
        "expires": None,
        "queue": queue,
        "exchange": "",
        "routing_key": queue,
    }
