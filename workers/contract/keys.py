"""Redis key layout: every key and channel of one job, derived from its id.

The id is a Redis Cluster hash tag (``llmq:job:{<id>}:events``): every key of one job hashes to
one slot, so the scripts that touch several of them at once (claim, flush, terminal write) would
stay valid on a sharded deployment. The ledger's keys share the ``{budget}`` tag the same way.
"""

from __future__ import annotations


class JobKeys:
    """Every Redis key and channel that belongs to one job."""

    __slots__ = (
        "batch",
        "cancel",
        "channel",
        "claim",
        "events",
        "job_id",
        "meta",
        "result",
        "tools",
        "webhook",
        "webhook_log",
    )

    PREFIX = "llmq:job:"

    def __init__(self, job_id: str) -> None:
        base = f"{self.PREFIX}{{{job_id}}}"
        self.job_id = job_id
        #: Pub/sub channel for live events.
        self.channel = f"{base}:live"
        #: Capped Redis Stream holding every event for replay (entry id = ``<seq>-1``).
        self.events = f"{base}:events"
        #: Hash: state, tenant, submitted_at; created once at submission (the idempotency guard).
        self.meta = f"{base}:meta"
        #: The final CompletionResult JSON, with a TTL.
        self.result = f"{base}:result"
        #: Present when a consumer asked for cancellation.
        self.cancel = f"{base}:cancel"
        #: Lease held by the worker currently running the job.
        self.claim = f"{base}:claim"
        #: Hash: the tool loop's journal (each turn's answer, started calls, results).
        self.tools = f"{base}:tools"
        #: Hash: the job's webhook delivery (``workers/contract/webhooks.py``, DeliveryRecord).
        self.webhook = f"{base}:webhook"
        #: List: one DeliveryAttempt JSON per delivery attempt (the last 50).
        self.webhook_log = f"{base}:webhook_log"
        #: Hash: the job's place in a provider batch (``workers/jobs/batchstate.py``): its state,
        #: the line it is, and the line's raw result once the batch ended.
        self.batch = f"{base}:batch"

    @property
    def records(self) -> tuple[str, str, str]:
        """The keys whose presence says the job is known in this Redis: its metadata (from its submit)
        and its events and result (until they expire). None of them: never submitted here, expired, or
        lost with Redis's data."""
        return (self.meta, self.events, self.result)
