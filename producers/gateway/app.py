"""The HTTP gateway: an ASGI app (Starlette) in front of the queue.

``create_gateway(settings)`` builds it; nothing connects until the app's lifespan starts, on the
server's own event loop (the Redis client, the shared pub/sub hub). Routes:

* ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``POST /v1/jobs/{id}/cancel``,
  ``GET /v1/jobs/{id}/events`` (SSE, resumable with ``Last-Event-ID``) - :mod:`.jobs`;
* ``GET /v1/jobs`` (the caller's history, filtered), ``POST /v1/jobs/{id}/replay`` - :mod:`.history`;
* ``GET /v1/queues``, ``GET /v1/budget`` (the browser view's panels) - :mod:`.panels`;
* ``GET /ui`` (the browser job view: a page and a script, no token needed to load it; every
  ``/v1/`` call it makes carries the token the user gives it) - :mod:`.ui`;
* ``POST /v1/chat/completions`` (OpenAI-compatible, streaming or not) - :mod:`.chat`;
* ``GET /v1/models``, ``GET /v1/models/{model}`` (what the workers accept, in OpenAI's shape) - :mod:`.models`;
* ``GET /metrics`` (Prometheus) and ``GET /healthz``, without a token: Prometheus and health
  checks reach the gateway directly; ``ops/nginx.conf`` does not publish ``/metrics``.

Everything under ``/v1/`` needs a bearer token, which decides the tenant.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from producers.aclient import AsyncClient
from producers.errors import SubmitRefusedError
from producers.gateway.auth import AuthMiddleware, TokenAuth
from producers.gateway.body import ClientGoneError
from producers.gateway.chat import chat_completions
from producers.gateway.errors import GatewayError, error_for_refusal, error_response
from producers.gateway.history import list_jobs, replay_job
from producers.gateway.jobs import cancel_job, get_job, job_events, submit_job
from producers.gateway.metrics import GatewayMetrics, MetricsMiddleware
from producers.gateway.models import list_models, retrieve_model
from producers.gateway.panels import budget, queues, whoami
from producers.gateway.settings import GatewaySettings
from producers.gateway.state import Gateway, Panels, gateway_of
from producers.gateway.ui import asset, page, ui_config

__all__ = ["create_gateway"]


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(gateway_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _refused(request: Request, exc: Exception) -> Response:
    """A submit the queue refused for now (``producers.errors.SubmitRefusedError``): 503 or 429 with
    ``Retry-After``, counted by its code."""
    assert isinstance(exc, SubmitRefusedError)
    gateway_of(request).metrics.submits_refused.labels(exc.code).inc()
    return error_for_refusal(exc).response()


def create_gateway(
    settings: GatewaySettings,
    client: AsyncClient | None = None,
    *,
    metrics_: GatewayMetrics | None = None,
    panels: Panels | None = None,
) -> Starlette:
    """The ASGI app. ``client`` is a seam for tests and embedding (else one is built at startup);
    ``panels`` gives the browser view its queue and budget sources (``llmq gateway`` wires them)."""
    gateway = Gateway(settings, client, metrics_ or GatewayMetrics(queue_size=settings.sse_queue_size), panels)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    auth = TokenAuth(
        settings.tokens, allow_anonymous=settings.allow_anonymous, anonymous_tenant=settings.anonymous_tenant
    )
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/jobs", submit_job, methods=["POST"]),
            Route("/v1/jobs", list_jobs, methods=["GET"]),
            Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
            Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
            Route("/v1/jobs/{job_id}/replay", replay_job, methods=["POST"]),
            Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/queues", queues, methods=["GET"]),
            Route("/v1/budget", budget, methods=["GET"]),
            Route("/v1/whoami", whoami, methods=["GET"]),
            Route("/ui", page, methods=["GET"]),
            Route("/ui/config.json", ui_config, methods=["GET"]),
            Route("/ui/{name}", asset, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        ],
        middleware=[Middleware(MetricsMiddleware, metrics=gateway.metrics), Middleware(AuthMiddleware, auth=auth)],
        exception_handlers={
            GatewayError: error_response,
            HTTPException: error_response,
            ClientGoneError: _client_gone,
            SubmitRefusedError: _refused,
            Exception: error_response,
        },
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
