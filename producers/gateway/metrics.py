"""The gateway's Prometheus metrics, on a registry made by the app factory (never a global one).

``llmq_gateway_sse_queue_depth`` is observed at every SSE write: how many events were waiting
between the Redis reader and the writer of that client. Depths near the queue size mean clients
that read slower than their jobs produce; those streams fall back to the replay Stream
(``llmq_gateway_sse_catchups_total``) instead of buffering in the gateway.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GatewayMetrics", "MetricsMiddleware"]


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, queue_size: int = 16) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "llmq_gateway_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "llmq_gateway_request_duration_seconds",
            "Time to the response status (not the whole stream)",
            ["route"],
            registry=r,
        )
        buckets = sorted({0, 1, 2, 4, 8, queue_size // 2, queue_size - 1, queue_size})
        self.sse_queue_depth = Histogram(
            "llmq_gateway_sse_queue_depth",
            "Events waiting between reader and writer of an SSE client, at each write",
            buckets=[b for b in buckets if b >= 0],
            registry=r,
        )
        self.sse_queue_capacity = Gauge(
            "llmq_gateway_sse_queue_capacity",
            "Size of each SSE client's event queue (alerts compare depth to it)",
            registry=r,
        )
        self.sse_queue_capacity.set(queue_size)
        self.sse_open = Gauge("llmq_gateway_sse_streams", "SSE responses being streamed", registry=r)
        self.sse_ended = Counter(
            "llmq_gateway_sse_ended",
            "SSE responses by how they ended: finished, client_gone, write_timeout, error",
            ["reason"],
            registry=r,
        )
        self.sse_catchups = Counter(
            "llmq_gateway_sse_catchups", "Times a stream read from the replay Stream instead of live", registry=r
        )
        self.jobs_submitted = Counter(
            "llmq_gateway_jobs_submitted", "Jobs enqueued, by endpoint", ["endpoint"], registry=r
        )
        self.submits_refused = Counter(
            "llmq_gateway_submits_refused",
            "Submits the queue refused for now (answered 503/429 with Retry-After), by code: redis_full ...",
            ["code"],
            registry=r,
        )
        self.disconnect_cancels = Counter(
            "llmq_gateway_disconnect_cancels", "Jobs cancelled because their client went away", registry=r
        )


class MetricsMiddleware:
    """Counts requests by route name (the endpoint, never the raw path: job ids are unbounded)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = _route(scope)
                self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(_route(scope), scope["method"], str(status)).inc()


def _route(scope: Scope) -> str:
    endpoint = scope.get("endpoint")
    return getattr(endpoint, "__name__", "unmatched") if endpoint is not None else "unmatched"
