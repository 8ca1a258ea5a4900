"""The webhook deliverer: every worker process drains the delivery queue, off the jobs' path.

Jobs queue their deliveries in their terminal write (``workers/jobs/webhooks.py``); here a thread
takes due ones from ``llmq:webhooks:{deliveries}:due`` (one script: due entries are re-scored to
``now + lease``, so a taken delivery is not taken again while its attempt runs, and comes back by
itself if this process dies), and a small pool of its own threads POSTs them. A slow or dead
receiver ties up at most that pool (``[webhooks] concurrency``, ``timeout_s``), never a job slot.

Each attempt is signed anew (Standard Webhooks, ``workers/contract/webhooks.py``) with the same
``webhook-id``, and ends within ``timeout_s`` however slowly the receiver answers (a deadline over
connect, send and read, below the lease). As the specification suggests: a 2xx ends the delivery;
``410 Gone`` ends it too (the receiver wants no more), as ``failed``; anything else is retried after
``[webhooks] backoff_s`` (the last step repeats, with jitter), or after the receiver's
``Retry-After`` when that is longer, until ``max_age_s`` (24 h) after the job ended. A target that
cannot be delivered to (an unknown name, no secret or a malformed one, an address the guard
refuses) is ``refused`` at once. An attempt's record is written only if no other attempt was
recorded since it began (a compare-and-set on the attempt count), so an attempt that outlived its
lease cannot log a second success. Every attempt is logged in the job's delivery log and counted
in the metrics; ``llmq_webhook_queued`` / ``llmq_webhook_due`` say how many deliveries wait.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.typing import EncodableT

from workers.contract import JobKeys
from workers.contract.redaction import shown_url
from workers.contract.webhooks import DUE_KEY, DeliveryAttempt, signature_headers, split_secrets
from workers.routes import WebhooksConfig
from workers.runtime.netguard import BlockedAddressError, GuardedHTTPConnection, NetGuard

__all__ = ["WebhookDeliverer", "WebhookMetrics"]

log = logging.getLogger("llmq.webhooks")

# KEYS: due. ARGV: now, lease_until, n. Takes up to n due deliveries: re-scored to the lease's end.
_TAKE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id) end
return due
"""
# KEYS: the job's webhook hash, its log. ARGV: the attempt count the attempt began with, the log
# entry, how many entries to keep, then field/value pairs. Records the attempt only if the delivery
# is still pending at that count (no other attempt was recorded meanwhile); 1 if it did.
_RECORD_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') ~= tonumber(ARGV[1]) then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return 1
"""
#: Entries kept in a job's delivery log.
LOG_KEEP = 50
#: Seconds between two readings of the delivery queue's size (the backlog gauges).
BACKLOG_EVERY_S = 5.0


@dataclass(frozen=True)
class Answer:
    """What a receiver answered one attempt."""

    status: int
    address: str | None
    #: Its ``Retry-After`` in seconds from now, if it sent one.
    retry_after_s: float | None = None


def retry_after_s(value: str | None, now: float) -> float | None:
    """``Retry-After`` (delay seconds or an HTTP date) as seconds from ``now``; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class RefusedError(Exception):
    """The delivery cannot be made at all (retrying would not help)."""


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "llmq_webhook_attempts_total",
            "Webhook delivery attempts by outcome (delivered, retry, failed = gave up, refused).",
            ["outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "llmq_webhook_attempt_seconds",
            "Duration of webhook delivery attempts.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.in_flight = Gauge("llmq_webhook_in_flight", "Webhook deliveries being attempted.", registry=registry)
        self.queued = Gauge(
            "llmq_webhook_queued",
            "Webhook deliveries not ended yet (due now or retrying later), in the whole queue.",
            registry=registry,
        )
        self.due = Gauge(
            "llmq_webhook_due",
            "Webhook deliveries due now and not being attempted: a lasting value means deliverers fall behind.",
            registry=registry,
        )


class WebhookDeliverer:
    def __init__(
        self,
        client: redis.Redis,
        config: WebhooksConfig,
        *,
        metrics: WebhookMetrics,
        allow_networks: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.config = config
        self.metrics = metrics
        self.guard = NetGuard([*config.allow_networks, *(allow_networks or [])])
        self._env = os.environ if env is None else env
        self._poll_s = poll_s
        self._clock = clock
        self._take = client.register_script(_TAKE_LUA)
        self._record_script = client.register_script(_RECORD_LUA)
        self._backlog_at = 0.0
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="llmq-webhook")
        self._free = threading.Semaphore(config.concurrency)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: An attempt's lease: its whole timeout (connect, send, read) and then some.
        self._lease_s = 3 * config.timeout_s + 5

    # --- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmq-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_backlog()
                taken = self.take_due()
            except redis.RedisError as exc:
                log.warning("webhook deliverer: Redis unavailable (%s); trying again", exc)
                taken = 0
            if not taken:
                self._stop.wait(self._poll_s)

    def take_due(self) -> int:
        """Take as many due deliveries as there are free slots and start them; how many were taken."""
        slots = 0
        while self._free.acquire(blocking=False):
            slots += 1
        if not slots:
            self._stop.wait(0.05)
            return 0
        now = self._clock()
        ids = self._take(keys=[DUE_KEY], args=[now, now + self._lease_s, slots])
        for _ in range(slots - len(ids)):
            self._free.release()
        for raw in ids:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            self._pool.submit(self._attempt_guarded, job_id)
        return len(ids)

    def _read_backlog(self) -> None:
        """Every few seconds: the queue's size and what is due now (the whole queue, any process)."""
        now = self._clock()
        if now - self._backlog_at < BACKLOG_EVERY_S:
            return
        self._backlog_at = now
        pipe = self._client.pipeline(transaction=False)
        pipe.zcard(DUE_KEY)
        pipe.zcount(DUE_KEY, "-inf", now)
        queued, due = pipe.execute()
        self.metrics.queued.set(queued)
        self.metrics.due.set(due)

    def _attempt_guarded(self, job_id: str) -> None:
        self.metrics.in_flight.inc()
        try:
            self.attempt(job_id)
        except Exception:  # the lease brings the delivery back; never kill the pool thread
            log.exception("webhook delivery of job %s failed unexpectedly", job_id)
        finally:
            self.metrics.in_flight.dec()
            self._free.release()

    # --- one attempt ------------------------------------------------------------------------------

    def attempt(self, job_id: str) -> str:
        """Make one attempt of the job's delivery and record it; the outcome."""
        keys = JobKeys(job_id)
        raw = self._client.hgetall(keys.webhook)
        record = {_text(k): _text(v) for k, v in raw.items()}
        if not record or record.get("state") != "pending":
            self._client.zrem(DUE_KEY, job_id)  # delivered or expired meanwhile
            return "gone"
        began_with = int(record.get("attempts", 0))
        number = began_with + 1
        started = self._clock()
        status: int | None = None
        address: str | None = None
        error: str | None = None
        wait: float | None = None
        try:
            url, secret = self._resolve(record["target"])
            answer = self._post(url, secret, record["msg_id"], record["body"].encode())
            status, address = answer.status, answer.address
            if 200 <= status < 300:
                outcome = "delivered"
            elif status == 410:
                outcome, error = "failed", "HTTP 410 Gone: the receiver wants no more deliveries"
            else:
                outcome, error, wait = "retry", f"HTTP {status}", answer.retry_after_s
        except (RefusedError, BlockedAddressError) as exc:
            outcome, error = "refused", str(exc)
        except (OSError, ValueError, http.client.HTTPException) as exc:  # connection, TLS, timeout, a malformed answer
            outcome, error = "retry", f"{type(exc).__name__}: {exc}"[:500]
        ended = self._clock()
        next_at = None
        if outcome == "retry":
            # a receiver's Retry-After may delay the next attempt, up to the longest backoff step
            # (a huge value would otherwise end the delivery early)
            asked = min(wait or 0.0, max(self.config.backoff_s))
            next_at = ended + max(self._backoff(number), asked)
            if next_at > float(record["created_at"]) + self.config.max_age_s:
                outcome, next_at = "failed", None
        entry = DeliveryAttempt(
            attempt=number,
            at=started,
            outcome=outcome,  # type: ignore[arg-type]
            status=status,
            error=error,
            duration_s=round(ended - started, 4),
            address=address,
        )
        if not self._record(keys, job_id, began_with, entry, next_at):
            log.info("webhook of job %s: attempt %d ended after another was recorded; not logged", job_id, number)
            return "superseded"
        self.metrics.attempts.labels(outcome).inc()
        self.metrics.duration.observe(max(0.0, ended - started))
        if outcome != "delivered":
            log.info("webhook of job %s: attempt %d %s (%s)", job_id, number, outcome, error)
        return outcome

    def _backoff(self, attempt: int) -> float:
        steps = self.config.backoff_s
        base = steps[min(attempt - 1, len(steps) - 1)]
        return base * random.uniform(0.8, 1.2)

    def _resolve(self, target: str) -> tuple[str, str]:
        config = self.config
        secret: str | None = None
        variable: str | None
        if "://" in target:
            url, variable = target, config.secret_env
        else:
            endpoint = config.endpoints.get(target)
            if endpoint is None:
                raise RefusedError(f"no webhook named {target!r} in [webhooks.endpoints]")
            url, variable, secret = endpoint.url, endpoint.secret_env, endpoint.secret
        if secret is None and variable:
            secret = self._env.get(variable)
        if not secret:
            raise RefusedError(f"no secret to sign with: set {variable or 'a secret'} for {shown_url(url)}")
        try:
            split_secrets(secret)
        except ValueError as exc:
            raise RefusedError(
                f"the secret {variable or 'configured'} for {shown_url(url)} is unusable: {exc}"
            ) from None
        return url, secret

    def _post(self, url: str, secret: str, msg_id: str, body: bytes) -> Answer:
        """POST the delivery; the whole exchange ends within ``timeout_s`` (a receiver trickling its
        answer is cut off at the deadline: the socket's own timeout only bounds each read)."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "content-type": "application/json",
            "user-agent": "llmqueue-webhooks",
            **signature_headers(secret, msg_id, int(self._clock()), body),
        }
        timeout = self.config.timeout_s
        conn = GuardedHTTPConnection(host, port, guard=self.guard, timeout=timeout, tls=tls)
        deadline = threading.Timer(timeout, conn.abort)
        deadline.daemon = True
        deadline.start()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(64 * 1024)  # a receiver's answer is not kept
            wait = retry_after_s(response.getheader("retry-after"), self._clock())
            return Answer(response.status, conn.address, wait)
        except (OSError, http.client.HTTPException) as exc:
            if conn.aborted:
                raise TimeoutError(f"no complete answer within {timeout:g} s") from exc
            raise
        finally:
            deadline.cancel()
            conn.close()

    def _record(
        self, keys: JobKeys, job_id: str, began_with: int, entry: DeliveryAttempt, next_at: float | None
    ) -> bool:
        """Write the attempt (record, log, due set) unless another attempt was recorded since it began."""
        state = {"retry": "pending", "delivered": "delivered", "failed": "failed", "refused": "refused"}[entry.outcome]
        fields: dict[str, EncodableT] = {"state": state, "attempts": entry.attempt}
        if entry.status is not None:
            fields["last_status"] = entry.status
        if entry.error is not None:
            fields["last_error"] = entry.error
        if entry.outcome == "delivered":
            fields["delivered_at"] = entry.at + entry.duration_s
        if next_at is not None:
            fields["next_at"] = next_at
        pairs = [x for pair in fields.items() for x in pair]
        args = [began_with, entry.model_dump_json(exclude_none=True), LOG_KEEP, *pairs]
        if not self._record_script(keys=[keys.webhook, keys.webhook_log], args=args):
            return False
        if next_at is not None:
            self._client.zadd(DUE_KEY, {job_id: next_at}, xx=True)
        else:
            self._client.zrem(DUE_KEY, job_id)
        return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
