"""Celery's task request, with the message body decoded once.

Celery's strategy decodes a message's body (``message.payload``) to tell protocol 1 from 2 and to
read the arguments, then hands the raw body to the pool, whose tracer decodes it again
(``fast_trace_task``): two ``json.loads`` of the same job per message (~0.7 % of a gevent worker's
samples at 1 s jobs, py-spy). Here the request carries the decoded ``(args, kwargs, embed)``, which
the tracer takes as it is when the content type is unset. Only for pools in this process (gevent,
threads): nothing is pickled on the way.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

__all__ = ["DecodedRequest"]


class DecodedRequest(Request):
    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        state: Any = self  # Celery's private slots, which its stubs omit
        if not state._decoded:
            payload = state._Request__payload  # what the strategy decoded (kombu caches it on the message)
            if isinstance(payload, list | tuple) and len(payload) == 3:
                state._body = payload
                state._decoded = True
                state._content_type = state._content_encoding = None
