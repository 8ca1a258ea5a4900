"""Bearer tokens -> tenants, checked for every ``/v1/`` request before routing.

Tokens are kept only as SHA-256 digests and looked up by digest, so the comparison does not leak
a token's prefix through timing, and a token never appears in a message, a log line or a metric.
Routing happens after authentication: without a valid token even a 404 tells nothing.

``--allow-anonymous`` serves a request without a token as the anonymous tenant; with no tokens
configured at all, any bearer token is anonymous too, since nothing could make it wrong: the official
SDKs always send one (``OpenAI(api_key=...)`` must be given some value), so refusing it would fail an
SDK user's first call. With tokens configured, an unknown token is still a 401.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from producers.gateway.errors import GatewayError

__all__ = ["AuthMiddleware", "TokenAuth"]

_MISSING = (
    "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY)."
)
_WRONG = "Incorrect API key provided."
_ANONYMOUS = " This gateway also serves requests that send no Authorization header, as the anonymous tenant."


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuth:
    def __init__(self, tokens: Mapping[str, str], *, allow_anonymous: bool = False, anonymous_tenant: str = "") -> None:
        self._tenants = {_digest(token): tenant for token, tenant in tokens.items()}
        self.allow_anonymous = allow_anonymous
        self.anonymous_tenant = anonymous_tenant

    def tenant_for(self, authorization: str | None) -> str:
        """The caller's tenant, or :class:`GatewayError` 401."""
        if not authorization:
            if self.allow_anonymous:
                return self.anonymous_tenant
            raise self._unauthorized(_MISSING)
        scheme, _, token = authorization.strip().partition(" ")
        anonymous_any = self.allow_anonymous and not self._tenants  # no token configured: none is wrong
        if scheme.lower() != "bearer" or not token.strip():
            if anonymous_any and scheme.lower() == "bearer":
                return self.anonymous_tenant  # ``OpenAI(api_key="")`` sends "Bearer " and nothing after
            raise self._unauthorized(_MISSING)
        tenant = self._tenants.get(_digest(token.strip()))
        if tenant is None:
            if anonymous_any:
                return self.anonymous_tenant  # an SDK's placeholder key
            message = _WRONG + (_ANONYMOUS if self.allow_anonymous else "")
            raise self._unauthorized(message, code="invalid_api_key")
        return tenant

    @staticmethod
    def _unauthorized(message: str, code: str | None = None) -> GatewayError:
        return GatewayError(401, message, code=code, headers={"www-authenticate": 'Bearer realm="llmq"'})


class AuthMiddleware:
    """Puts the caller's tenant in ``request.state.tenant``; answers 401 for a missing/wrong token."""

    def __init__(self, app: ASGIApp, auth: TokenAuth, prefix: str = "/v1/") -> None:
        self.app = app
        self.auth = auth
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"] + "/").startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            tenant = self.auth.tenant_for(authorization)
        except GatewayError as exc:
            await exc.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)
