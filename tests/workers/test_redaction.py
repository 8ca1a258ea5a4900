"""The credential scrubber keeps instructions readable and still removes every real credential.

(Its older cases: ``tests/workers/llm/test_errors.py``.)
"""

from __future__ import annotations

import pytest

from producers.gateway.auth import TokenAuth
from producers.gateway.errors import GatewayError
from workers.contract import redact


@pytest.mark.parametrize(
    "text",
    [
        "Send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).",
        "uses Bearer authentication; see the docs",
        "curl -H 'Authorization: Bearer $OPENAI_API_KEY'",
        "set api_key=${ANTHROPIC_API_KEY} in the environment",
        "api_key=<your key here>",
        "Authorization: Bearer <token>",
        "token: ...",
        "password=xxxx",
        "Authorization: Bearer [redacted]",
        "Bearer tokens are sent in a header",
    ],
)
def test_instructions_and_placeholders_are_left_as_written(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("Authorization: Bearer sk-live-abcdef123456", "Authorization: Bearer [redacted]"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc", "Bearer [redacted]"),
        ("bearer 0123456789abcdef", "bearer [redacted]"),
        ("Bearer ABCDEFGHJK", "Bearer [redacted]"),  # capitals without a KEY/TOKEN word: a token
        ("api_key=AKIAIOSFODNN7EXAMPLE", "api_key=[redacted]"),
        ("api_key=ABC", "api_key=[redacted]"),
        ("password: SECRET_VALUE_1", "password: [redacted]"),  # a digit: never a placeholder
        ("api_key=<sk-live-abc123>", "api_key=[redacted]"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer [redacted]"),
        ("authorization: BEARER abc", "authorization: BEARER [redacted]"),
    ],
)
def test_real_credentials_are_still_scrubbed(text: str, clean: str) -> None:
    assert redact(text) == clean


def test_the_gateways_401_message_reads_as_written() -> None:
    with pytest.raises(GatewayError) as missing:
        TokenAuth({"tok-a-123456": "team-a"}).tenant_for(None)
    body = missing.value.body()["error"]["message"]
    assert "[redacted]" not in body
    assert "using Bearer auth (Authorization: Bearer YOUR_KEY)" in body
