"""Azure OpenAI chat completions: the OpenAI wire format behind Azure's URLs, keys and filters.

URLs: with a dated ``api_version`` (``2024-10-21``, ``2025-01-01-preview``...) a call goes to
``{base_url}/openai/deployments/{deployment}/chat/completions?api-version=...``, the model part
of the model id naming the deployment; without one (or ``v1``), to the v1 path
``{base_url}/openai/v1/chat/completions`` with the deployment in the body's ``model``; ``preview``
(or ``latest``) is the v1 path's own opt-in to preview features: ``.../openai/v1/chat/completions?api-version=preview``. The key
travels in the ``api-key`` header, or as a bearer token (an Entra ID token) with ``auth = "bearer"``.

Wire quirks handled here (the rest is :mod:`workers.llm.openai`): the first stream chunk has
``choices: []``, an empty ``id`` and ``model`` and only ``prompt_filter_results``; every choice
carries ``content_filter_results``; ``finish_reason: "content_filter"`` and the 400
``content_filter`` error (with ``inner_error.code`` ``ResponsibleAIPolicyViolation``) are our
non-retryable :class:`~workers.llm.errors.ContentFilteredError`; a 429's error ``code`` is the
string ``"429"``, and its wait comes as ``retry-after`` or only as ``x-rate-limit-reset-tokens``
(seconds).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import quote

from workers.llm.errors import LLMQError
from workers.llm.httpclient import HTTPClient
from workers.llm.openai import OpenAIProvider, openai_error_from_body

__all__ = ["AzureOpenAIProvider", "azure_error_from_body"]

#: api-versions from this one on take ``max_completion_tokens`` (reasoning models need it) and
#: ``stream_options`` (older ones refuse it: "Unrecognized request argument supplied").
_NEW_FIELDS_SINCE = "2024-09-01"
#: ``api_version`` values of the v1 path (the others are dated versions of deployment URLs).
V1_VERSIONS = ("v1", "preview", "latest")


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None


def azure_error_from_body(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str = "azure",
    model: str = "",
    secret: str | None = None,
) -> LLMQError:
    """An OpenAI-shaped error plus Azure's extras: the filter's ``inner_error`` and its reset header."""
    retry_after = None
    if status == 429 and not headers.get("retry-after") and not headers.get("retry-after-ms"):
        retry_after = _seconds(headers.get("x-rate-limit-reset-tokens")) or _seconds(
            headers.get("x-rate-limit-reset-requests")
        )
    extra: dict[str, object] = {}
    try:
        error = json.loads(body)["error"]
        inner = error.get("inner_error") or error.get("innererror")
    except (ValueError, KeyError, TypeError, AttributeError):
        inner = None
    if isinstance(inner, dict):
        if isinstance(inner.get("code"), str):
            extra["inner_error_code"] = inner["code"]
        results = inner.get("content_filter_results") or inner.get("content_filter_result")
        if isinstance(results, dict):
            extra["filtered_categories"] = sorted(
                k for k, v in results.items() if isinstance(v, dict) and v.get("filtered")
            )
    return openai_error_from_body(
        status,
        headers,
        body,
        provider=provider,
        model=model,
        secret=secret,
        retry_after=retry_after,
        extra=extra,
        request_id=headers.get("x-request-id") or headers.get("apim-request-id"),
    )


class AzureOpenAIProvider(OpenAIProvider):
    name = "azure"
    key_env = "AZURE_OPENAI_API_KEY"

    def __init__(
        self,
        http: HTTPClient,
        *,
        api_key: str | None,
        base_url: str,
        api_version: str | None = None,
        bearer: bool = False,
        name: str | None = None,
        key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/openai/v1"):
            base = base[: -len("/openai/v1")]
        elif base.endswith("/openai"):
            base = base[: -len("/openai")]
        self._base = base
        #: A dated version: deployment URLs; None: the v1 path (with ``?api-version=preview|latest``
        #: when given).
        self._api_version = None if not api_version or api_version in V1_VERSIONS else api_version
        v1_query = f"?api-version={api_version}" if api_version in ("preview", "latest") else ""
        super().__init__(
            http,
            api_key=api_key,
            base_url=base + "/openai/v1",
            url=f"{base}/openai/v1/chat/completions{v1_query}",
            name=name,
            key_env=key_env or self.key_env,
            headers=headers,
            timeout_s=timeout_s,
        )
        self._bearer = bearer
        new_enough = self._api_version is None or self._api_version >= _NEW_FIELDS_SINCE
        self._max_tokens_field = "max_completion_tokens" if new_enough else "max_tokens"
        self._stream_usage = new_enough

    def endpoint(self, model: str, *, stream: bool) -> str:
        if self._api_version is None:
            return self._url
        deployment = quote(model, safe="")
        return f"{self._base}/openai/deployments/{deployment}/chat/completions?api-version={self._api_version}"

    @property
    def genai_name(self) -> str:
        return "azure.ai.openai"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if self._bearer else {"api-key": api_key}

    def request_id(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-request-id") or headers.get("apim-request-id")

    def error_from_body(self, status: int, headers: Mapping[str, str], body: bytes, *, model: str) -> LLMQError:
        return azure_error_from_body(status, headers, body, provider=self.name, model=model, secret=self._api_key)
