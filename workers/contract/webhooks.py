"""Webhooks on the wire: the payload, its Standard Webhooks signature, the delivery record and queue.

A job that names a webhook (``CompletionJob.webhook``: a configured name or a URL), or whose tenant
has one in the config, gets its result POSTed when it ends. Each delivery carries the three headers
of the Standard Webhooks specification:

* ``webhook-id``: ``msg_`` + the job id, the same on every attempt (receivers de-duplicate on it);
* ``webhook-timestamp``: the attempt's time, integer unix seconds;
* ``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}``, keyed
  with the secret's bytes (a secret is written ``whsec_`` + base64 of its bytes). While a secret is
  rotated, the configured value holds the new and the old secret separated by whitespace, and the
  header carries one signature per secret, space-separated, as the specification's rotation form
  says: a receiver holding either secret verifies the delivery.

The body is JSON: ``{"type": "job.succeeded" | "job.failed" | "job.cancelled", "timestamp": ISO 8601,
"data": <CompletionResult>}``, built once when the job ends, so every attempt sends the same bytes.

Redis: the due deliveries are one sorted set, ``llmq:webhooks:{deliveries}:due`` (job id -> when
the next attempt is due, unix seconds); each job's delivery record is the hash
``llmq:job:{<id>}:webhook`` (:class:`DeliveryRecord`'s fields) and its log the list
``llmq:job:{<id>}:webhook_log`` (one :class:`DeliveryAttempt` JSON per attempt, the last 50).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from workers.contract.base import WEBHOOK_NAME, WireModel
from workers.contract.result import CompletionResult

__all__ = [
    "DUE_KEY",
    "WEBHOOK_NAME",
    "DeliveryAttempt",
    "DeliveryRecord",
    "WebhookPayload",
    "WebhookSignatureError",
    "decode_secret",
    "message_id",
    "sign",
    "signature_headers",
    "split_secrets",
    "verify",
]

#: The sorted set of due deliveries (its own hash tag: one slot for the delivery queue).
DUE_KEY = "llmq:webhooks:{deliveries}:due"
#: How far a ``webhook-timestamp`` may be from the receiver's clock (the specification's 5 minutes).
TOLERANCE_S = 300


class WebhookSignatureError(ValueError):
    """A delivery whose headers are missing, too old or too new, or whose signature does not match."""


def message_id(job_id: str) -> str:
    """The ``webhook-id`` of a job's delivery: stable across attempts and redeliveries."""
    return f"msg_{job_id}"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (a secret without the prefix is base64 too)."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret needs at least 16 bytes (24 and more are recommended)")
    return key


def split_secrets(value: str) -> list[str]:
    """The secrets of a configured value: one, or several separated by whitespace (a rotation, the
    new one first); each is checked (:func:`decode_secret`), so a bad one is refused before use."""
    secrets = value.split()
    if not secrets:
        raise ValueError("a webhook secret is whsec_ followed by base64")
    for secret in secrets:
        decode_secret(secret)
    return secrets


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of '{msg_id}.{timestamp}.{body}'>``."""
    digest = hmac.new(decode_secret(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers; ``secret`` may hold several secrets (a rotation): one signature each."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in split_secrets(secret)),
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> None:
    """Check a delivery as a receiver should (raises :class:`WebhookSignatureError`): any of the
    header's signatures made with ``secret`` (or, during a receiver's own rotation, with any of the
    whitespace-separated secrets it holds) passes."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise WebhookSignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookSignatureError("webhook-timestamp is not integer unix seconds") from None
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_S:
        raise WebhookSignatureError("webhook-timestamp is more than 5 minutes away")
    expected = [sign(s, msg_id, timestamp, body) for s in split_secrets(secret)]
    if not any(hmac.compare_digest(e, given) for e in expected for given in signatures.split(" ")):
        raise WebhookSignatureError("no matching signature")


class DeliveryRecord(WireModel):
    """The hash ``llmq:job:{<id>}:webhook``: one job's delivery, as the deliverer keeps it."""

    #: The webhook's configured name, or the URL the job gave.
    target: str
    msg_id: str
    state: Literal["pending", "delivered", "failed", "refused"] = "pending"
    attempts: int = 0
    #: When the job ended and the delivery was queued (unix seconds); retries stop after the
    #: configured window (24 h by default) counted from here.
    created_at: float
    next_at: float | None = None
    delivered_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None


class DeliveryAttempt(WireModel):
    """One entry of ``llmq:job:{<id>}:webhook_log``."""

    attempt: int = Field(ge=1)
    at: float
    outcome: Literal["delivered", "retry", "failed", "refused"]
    #: The receiver's HTTP status, if it answered.
    status: int | None = None
    error: str | None = None
    duration_s: float = 0.0
    #: The address connected to (after the private-address check).
    address: str | None = None


class WebhookPayload(WireModel):
    """The JSON body of a webhook delivery (what the signature covers, byte for byte)."""

    type: Literal["job.succeeded", "job.failed", "job.cancelled"]
    #: When the job ended (ISO 8601, UTC).
    timestamp: str
    data: CompletionResult
