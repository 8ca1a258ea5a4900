"""Gateway settings and bearer-token parsing.

Nothing here reads the environment on import; :func:`parse_tokens` turns the
``LLMQ_GATEWAY_TOKENS`` value (``token:tenant,token:tenant``) into a mapping, and the ``llmq gateway``
command merges it with ``[gateway.tokens]`` from the config file. Error messages name the position
of a bad entry, never the token itself.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from workers.connections.redisurl import check_redis_url

__all__ = ["DEFAULT_TENANT", "GatewaySettings", "parse_tokens"]

#: Tenant of a bare token (no ``:tenant`` part), matching ``CompletionJob.tenant``'s default.
DEFAULT_TENANT = "default"
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
OnDisconnect = Literal["cancel", "finish"]


def parse_tokens(raw: str | None) -> dict[str, str]:
    """``"tok-a:team-a, tok-b:team-b"`` -> ``{"tok-a": "team-a", "tok-b": "team-b"}``.

    A bare ``token`` maps to the ``default`` tenant. The tenant is what follows the *last* colon,
    so a token may itself contain colons (a tenant never does).
    """
    tokens: dict[str, str] = {}
    for position, entry in enumerate((raw or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        token, sep, tenant = entry.rpartition(":")
        if not sep:
            token, tenant = entry, DEFAULT_TENANT
        token, tenant = token.strip(), tenant.strip()
        if not token:
            raise ValueError(f"LLMQ_GATEWAY_TOKENS entry {position} has no token before ':'")
        if not _TENANT.match(tenant):
            raise ValueError(
                f"LLMQ_GATEWAY_TOKENS entry {position}: the tenant must be 1-64 letters, digits, '_', '.' or '-'"
            )
        tokens[token] = tenant
    return tokens


class GatewaySettings(BaseModel):
    """Everything the HTTP gateway needs; build it explicitly (tests) or from the command line."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Redis of the queue (``None``: ``LLMQ_REDIS_URL`` or the local default, read when the app starts).
    redis_url: Annotated[str, AfterValidator(check_redis_url)] | None = None
    #: Celery queue jobs are sent to.
    queue: str = "llmq"
    #: bearer token -> tenant.
    tokens: dict[str, str] = Field(default_factory=dict, repr=False)
    #: Serve requests without a token as ``anonymous_tenant`` (only with ``--allow-anonymous``).
    allow_anonymous: bool = False
    anonymous_tenant: str = "anonymous"
    #: Largest accepted request body, enforced while reading (not only from Content-Length).
    max_body_bytes: Annotated[int, Field(gt=0)] = 1 << 20
    #: Events buffered between the Redis reader and the HTTP writer of one SSE client.
    sse_queue_size: Annotated[int, Field(ge=1, le=4096)] = 16
    #: A client that does not take one write within this many seconds is dropped.
    write_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    #: An SSE comment is sent after this many idle seconds (keeps proxies and clients from timing out).
    heartbeat_s: Annotated[float, Field(gt=0)] = 15.0
    #: A stream with no live message for this long looks in the job's replay Stream (a safety net:
    #: subscription confirmations and reconnects already trigger a catch-up).
    idle_check_s: Annotated[float, Field(gt=0)] = 5.0
    #: A chat completion whose client goes away: cancel its job (abort the provider call) or finish it.
    on_disconnect: OnDisconnect = "cancel"
    #: The same for ``GET /v1/jobs/{id}/events`` (a watcher may come back with Last-Event-ID), unless
    #: the request says ``?on_disconnect=cancel``.
    events_on_disconnect: OnDisconnect = "finish"
    #: A streamed chat completion holds its response headers (so an early failure can still be an
    #: HTTP error status) until the first content, or at most this long.
    hold_headers_s: Annotated[float, Field(ge=0)] = 10.0
    #: How long a non-streaming chat completion waits for its job.
    result_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    result_ttl_s: Annotated[int, Field(ge=60)] = 86_400
    #: Days of job history the workers keep (``LLMQ_HISTORY_DAYS``): how far back ``GET /v1/jobs`` looks.
    history_days: Annotated[int, Field(ge=0, le=366)] = 7
    #: The browser view (``/ui``) shows message text (deltas, answers, tool arguments): ``LLMQ_UI_CONTENT=1``.
    ui_content: bool = False
    #: Redis connections of the gateway (SSE clients share one pub/sub connection; other commands
    #: are short). Requests wait for a free one rather than opening hundreds at once under a burst.
    redis_max_connections: Annotated[int, Field(ge=4)] = 64

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, tokens: dict[str, str]) -> dict[str, str]:
        for position, (token, tenant) in enumerate(tokens.items(), start=1):
            if not token or token != token.strip():
                raise ValueError(f"token {position} is empty or has surrounding whitespace")
            if not _TENANT.match(tenant):
                raise ValueError(f"token {position}: tenant must be 1-64 letters, digits, '_', '.' or '-'")
        return tokens

    @field_validator("anonymous_tenant")
    @classmethod
    def _anonymous(cls, tenant: str) -> str:
        if not _TENANT.match(tenant):
            raise ValueError("anonymous_tenant must be 1-64 letters, digits, '_', '.' or '-'")
        return tenant
