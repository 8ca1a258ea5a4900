"""A job's run on the provider-batch side: sent to a batch (parked), or ended from its batch line.

A job that says ``batch: "allow"`` or ``"auto"`` is still an ordinary job: it is queued, claimed and
started like any other (its ``start`` event comes from the run that parks it), and ended by a run
of its own (the terminal event, the stored result, the metrics, the Flower task). Between the two,
its request waits as one line of a provider batch (``workers/jobs/batchstate.py``, the batcher in
``workers/runtime/batcher.py``), and no worker slot is held.

:meth:`BatchLane.choose` decides per run, from the job's deadline and its model's provider:

* ``batch``: the provider has a batch API (OpenAI, Anthropic), the job runs no worker tools, and
  (``auto``) its deadline leaves the provider's window plus ``margin_s`` (no deadline: no hurry);
  ``allow`` goes to a batch unless its deadline is closer than ``live_margin_s``;
* ``flex``: an ``auto`` job whose deadline is too short for a batch, on an OpenAI model offering
  ``service_tier: "flex"`` (``[batch] flex``): live, at the flex price;
* ``live``: everything else.

Money: parking reserves the worst case at the batch price (the price table's times
``[models."<id>"] batch_discount``, else ``[batch] discount``) for the window's length; the ending run settles the line's actual cost
against that reservation (an errored, expired or cancelled line is not billed: released). A job
cancelled before its batch was sent is dropped (the batcher sends it back, it ends ``cancelled``);
after, its result is discarded and its cost still settled (:meth:`BatchLane.discard`).

Lines that expired, failed with a retryable error, or were still pending when the job's deadline
came near (the batcher marks them ``live``) run live, once: the run finds the line ``live`` and
goes through the ordinary chain.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from workers.accounting.ledger import Ledger
from workers.accounting.metered import Meter
from workers.accounting.money import Reservation
from workers.accounting.preflight import CallPlan
from workers.accounting.prices import PriceBook
from workers.contract import CompletionJob, split_model_id
from workers.contract.presence import BatchIntake
from workers.jobs.batchstate import BatchStore, JobLine
from workers.llm.base import ChatRequest, Completion
from workers.llm.batchapi import BatchAPI, LineOutcome
from workers.llm.batchapis import batch_api
from workers.llm.errors import LLMQError
from workers.llm.openai_batch import OpenAIBatchAPI
from workers.llm.registry import ProviderRegistry
from workers.routes import BatchConfig, LLMQConfig

__all__ = ["BATCH_ATTEMPT", "BatchLane", "Route", "discounted", "intake_of", "model_discounts", "reservation_json"]

log = logging.getLogger("llmq.batch")

#: The ledger's call number of a job's batch line (far above the live calls' 1, 2, ...).
BATCH_ATTEMPT = 1000
Route = Literal["batch", "flex", "live"]
#: Jobs :attr:`BatchLane.taken_jobs` keeps (a few KB each).
TAKEN_JOBS_MAX = 10_000
#: The providers whose batch APIs are used (their built-in entries).
BATCH_PROVIDERS = frozenset({"openai", "anthropic"})


def discounted(config: BatchConfig, model_discounts: Mapping[str, float], model_id: str) -> Decimal:
    """The share of the price table's price a batch (or flex) call of ``model_id`` costs: its
    ``[models."<id>"] batch_discount``, else ``[batch] discount``."""
    return Decimal(str(model_discounts.get(model_id, config.discount)))


def reservation_json(r: Reservation) -> str:
    """A line's reservation as stored in its hash (read back by :meth:`BatchLane.reservation`; the
    scopes' states are not kept: a release finds the scopes again)."""
    return json.dumps(
        {
            "job_id": r.job_id,
            "attempt": r.attempt,
            "tenant": r.tenant,
            "month": r.month,
            "amount_micros": r.amount_micros,
            "expires_at_ms": r.expires_at_ms,
            "already_settled": r.already_settled,
            "settled_micros": r.settled_micros,
            "tags": list(r.tags),
            "user": r.user,
            "model": r.model,
            "day": r.day,
        }
    )


def intake_of(config: BatchConfig) -> BatchIntake | None:
    """What a worker announces in its presence when its batcher takes jobs straight from producers."""
    if not (config.enabled and config.batcher and config.intake):
        return None
    return BatchIntake(allow_min_s=config.live_margin_s, auto_min_s=config.window_s + config.margin_s)


def model_discounts(config: LLMQConfig) -> dict[str, float]:
    """The ``[models."<id>"] batch_discount`` of every model that has one."""
    return {model_id: mc.batch_discount for model_id, mc in config.models.items() if mc.batch_discount is not None}


@dataclass(frozen=True, slots=True)
class Answered:
    """A line's answer, settled: what the run ends the job with."""

    completion: Completion
    model_id: str


class BatchLane:
    """The batch side of the runs of one worker process."""

    def __init__(
        self,
        store: BatchStore,
        registry: ProviderRegistry,
        config: BatchConfig,
        ledger: Ledger | None,
        prices: PriceBook,
        *,
        keep_s: int,
        model_discounts: Mapping[str, float] | None = None,
    ) -> None:
        self.store = store
        self._registry = registry
        self.config = config
        self._ledger = ledger
        self._prices = prices
        self._discounts = dict(model_discounts or {})
        #: How long a job's line and keys are kept: the window, its margin and the results' TTL.
        self.keep_s = int(config.window_s + config.margin_s) + keep_s
        #: Jobs the batcher took into the lane, as validated then, by id (the same payload bytes its
        #: ending reads back: not validated twice in one process); bounded, oldest dropped first.
        self.taken_jobs: dict[str, CompletionJob] = {}

    def remember(self, job: CompletionJob) -> None:
        """Keep ``job`` (validated from its line's payload) for its ending (:attr:`taken_jobs`)."""
        jobs = self.taken_jobs
        jobs[job.id] = job
        if len(jobs) > TAKEN_JOBS_MAX:
            del jobs[next(iter(jobs))]

    def discount(self, model_id: str) -> Decimal:
        return discounted(self.config, self._discounts, model_id)

    # --- the decision -------------------------------------------------------------------------------

    def api_for(self, model_id: str) -> BatchAPI | None:
        """The batch API of ``model_id``'s provider: the built-in ``openai`` and ``anthropic`` only
        (a named entry may be a compatible server without one)."""
        provider_name, _ = split_model_id(model_id)
        if provider_name not in BATCH_PROVIDERS:
            return None
        try:
            return batch_api(self._registry.get(provider_name))
        except LLMQError:
            return None

    def choose(self, job: CompletionJob, chain: list[str], remaining_s: float | None) -> Route:
        """Where this run sends the job (module docstring). ``remaining_s``: to its deadline."""
        config = self.config
        if job.batch is None or not config.enabled or job.worker_tools:
            return "live"
        model_id = chain[0]
        can_batch = self.api_for(model_id) is not None
        if job.batch == "allow":
            room = remaining_s is None or remaining_s > config.live_margin_s
        else:
            room = remaining_s is None or remaining_s >= config.window_s + config.margin_s
        if can_batch and room:
            return "batch"
        if job.batch == "auto" and self._flex(model_id):
            return "flex"
        return "live"

    def _flex(self, model_id: str) -> bool:
        provider_name, native = split_model_id(model_id)
        try:
            provider = self._registry.get(provider_name)
        except LLMQError:
            return False
        if not isinstance(batch_api(provider), OpenAIBatchAPI):
            return False
        return any(fnmatch.fnmatchcase(native, p) for p in self.config.flex)

    # --- parking ----------------------------------------------------------------------------------

    def line_body(self, model_id: str, request: ChatRequest, meter: Meter) -> tuple[bytes, CallPlan]:
        """The line's body (the live call's bytes) and its plan (the worst case, at the table's price)."""
        api = self.api_for(model_id)
        if api is None:  # choose() said batch: the provider was there a moment ago
            raise LLMQError(f"{model_id} has no batch API", model=model_id)
        _, native = split_model_id(model_id)
        plan = meter.plan(model_id, request)
        prepared = ChatRequest(
            messages=plan.messages,
            params=request.params,
            tools=request.tools,
            headers=request.headers,
            prompt_tokens=plan.prompt.tokens,
        )
        return api.provider.body_bytes(native, prepared), plan

    def park(self, job: CompletionJob, model_id: str, request: ChatRequest, meter: Meter) -> None:
        """Reserve the worst case at the batch price and leave the job's line to the batcher."""
        body, plan = self.line_body(model_id, request, meter)
        reservation = ""
        if self._ledger is not None:
            held = self._ledger.reserve(
                job.id,
                BATCH_ATTEMPT,
                job.tenant,
                meter.priced(plan.worst_case_usd) or 0,
                lease_s=float(self.keep_s),
                tags=job.tags,
                user=job.user,
                model=plan.model,
            )
            reservation = reservation_json(held)
        deadline = (job.submitted_at or 0) + job.deadline_s if job.deadline_s is not None else None
        self.store.park(
            job.id,
            group=model_id,
            body=body,
            job=job.model_dump_json(exclude_none=True).encode(),
            reservation=reservation,
            deadline=deadline,
            ttl_s=self.keep_s,
        )

    # --- ending from the line -----------------------------------------------------------------------

    def outcome(self, line: JobLine) -> LineOutcome:
        """The line's result, parsed by its provider's batch API (nothing reported: expired)."""
        if not line.raw:
            return LineOutcome(line.key, "expired")
        api = self.api_for(line.group)
        if api is None:
            raise LLMQError(f"{line.group}: its provider is no longer configured", model=line.group)
        _, native = split_model_id(line.group)
        found = api.outcome(line.raw, native)
        return found if found is not None else LineOutcome(line.key, "expired")

    def answer(self, line: JobLine, outcome: LineOutcome, request: ChatRequest, meter: Meter) -> Answered:
        """A ``succeeded`` line's answer, parsed by the live adapter, its cost settled at the batch price."""
        model_id = line.group
        api = self.api_for(model_id)
        if api is None:
            raise LLMQError(f"{model_id}: its provider is no longer configured", model=model_id)
        _, native = split_model_id(model_id)
        plan = meter.plan(model_id, request)
        reservation = self.reservation(line)
        try:
            completion = api.answer(native, request, outcome)
        except BaseException:
            self.release(line)
            raise
        completion.usage = meter.usage(
            plan, completion.usage, completion.text, completion.tool_calls, completion.thinking
        )
        meter.settle(reservation, plan, completion.usage)
        return Answered(completion, model_id)

    def discard(self, line: JobLine, request: ChatRequest, meter: Meter) -> None:
        """A cancelled job's answered line: its result is not used, its cost is settled all the same."""
        if line.state != "done":
            return
        outcome = self.outcome(line)
        if outcome.kind != "succeeded":
            self.release(line)
            return
        try:
            self.answer(line, outcome, request, meter)
        except LLMQError as exc:  # an answer that does not parse was still billed: nothing to settle
            log.warning("job %s: its discarded batch answer did not parse: %s", line.job_id, exc.message)

    def reservation(self, line: JobLine) -> Reservation | None:
        if not line.reservation or self._ledger is None:
            return None
        fields = json.loads(line.reservation)
        fields["scopes"] = ()
        fields["tags"] = tuple(fields.get("tags") or ())
        return Reservation(**fields)

    def release(self, line: JobLine) -> None:
        """The line was not billed (errored, expired, cancelled, or the job went live before it ran)."""
        reservation = self.reservation(line)
        if reservation is not None and self._ledger is not None:
            self._ledger.release(reservation)

    def go_live(self, line: JobLine) -> None:
        """The job runs live from now on (once): a redelivery does not park it again."""
        self.store.move(line.job_id, ("pending", "sent", "done", "dropped"), {"state": "live"})

    def settle_late(self, line: JobLine, outcome: LineOutcome) -> None:
        """A line answered after its job ended without it (cancelled, or gone live as its deadline
        came near): the provider bills it all the same, so its cost is settled at the batch price
        from the usage it reports (the batcher's side; nothing else of the answer is used)."""
        reservation = self.reservation(line)
        if reservation is None or self._ledger is None:
            return
        api = self.api_for(line.group)
        if outcome.kind != "succeeded" or api is None or not line.job:
            self._ledger.release(reservation)
            return
        _, native = split_model_id(line.group)
        try:
            job = CompletionJob.model_validate_json(line.job)
            usage = api.answer(native, ChatRequest(messages=[], params=job), outcome).usage
            cost = self._prices.lookup(line.group).cost(usage) if usage is not None else None
        except (LLMQError, ValueError) as exc:
            log.warning("job %s: the late batch answer's cost is unknown (%s); nothing settled", line.job_id, exc)
            self._ledger.release(reservation)
            return
        self._ledger.settle(reservation, (cost or Decimal(0)) * self.discount(line.group))
