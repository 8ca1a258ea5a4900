"""The pipeline's step for a job that may wait (``batch: "allow"|"auto"``), run between its meter and
its model chain: the job is parked in a provider batch (this run ends nothing), ended from its line's
answer, or sent on live. The decisions and the money are :class:`~workers.jobs.batched.BatchLane`'s;
this module applies them to one run.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from workers.accounting.metered import Meter
from workers.contract import Attempt
from workers.jobs.batched import BatchLane
from workers.jobs.batchstate import JobLine
from workers.jobs.resources import JobResources
from workers.jobs.run import JobRun
from workers.llm.base import ChatRequest, Completion
from workers.llm.errors import LLMQError, error_type_name
from workers.prompts.render import render_job

__all__ = ["WAITING", "batch_step", "discard_line"]

log = logging.getLogger("llmq.pipeline")

#: Why a run ended nothing: the job waits in a provider batch (the task's "skipped" reason).
WAITING = "in a provider batch"


def batch_step(
    lane: BatchLane, run: JobRun, chain: list[str], line: JobLine | None, request: ChatRequest, meter: Meter
) -> Completion | str | None:
    """:data:`WAITING` (parked, or a redelivery of the run that parked it: no ending now), the
    completion its line answered (settled at the batch price), or None: the job runs live."""
    job = run.job
    if line is None or line.state == "pending":
        route = lane.choose(job, chain, run.ctx.remaining())
        if route == "batch":
            meter.price_factor = lane.discount(chain[0])
            lane.park(job, chain[0], request, meter)
            log.info("job %s: waits in a provider batch of %s", job.id, chain[0])
            return WAITING
        if route == "flex":
            meter.price_factor = lane.discount(chain[0])
            request.service_tier = "flex"
        return None
    if line.state == "sent":  # a redelivery of the parking run: the batcher sends it again at the end
        return WAITING
    if line.state != "done":  # live (retryable, expired, or its deadline came near) or dropped
        return None
    outcome = lane.outcome(line)
    if outcome.kind == "succeeded":
        meter.price_factor = lane.discount(line.group)
        answered = lane.answer(line, outcome, request, meter)
        meter.price_factor = Decimal(1)  # a repair turn after it is a live call, at the live price
        run.model_used = answered.model_id
        if job.stream and answered.completion.text:
            run.publisher.delta(answered.completion.text)  # the answer at once, as a cached one is sent
        return answered.completion
    lane.release(line)
    error = outcome.error
    if outcome.kind == "errored" and error is not None and not error.retryable:
        run.ctx.attempts.append(
            Attempt(model=chain[0], status="failed", error_type=error_type_name(error), message=error.message)
        )
        raise error
    # expired, cancelled by the provider, or a retryable error: live, once
    lane.go_live(line)
    log.info("job %s: its batch line ended %s; running it live", job.id, outcome.kind)
    return None


def discard_line(lane: BatchLane, res: JobResources, run: JobRun) -> None:
    """A cancelled job: a line not sent yet is dropped; an answered one has its cost settled, its
    answer dropped (the run then ends the job ``cancelled``)."""
    job = run.job
    try:
        line = lane.store.line(job.id)
        if line is None or line.state != "done":
            if line is not None and line.state == "pending":
                lane.store.move(job.id, ("pending",), {"state": "dropped"})
            return
        rendered = render_job(job, res.redis, max_chars=res.settings.prompt_max_chars)
        meter = Meter(job, res.counter, res.prices, res.ledger, run.ctx, res.metrics.usage)
        meter.price_factor = lane.discount(line.group)
        lane.discard(line, ChatRequest(messages=rendered.messages, params=job, tools=job.client_tools), meter)
        run.meter = meter
    except LLMQError as exc:
        log.warning("job %s: settling its discarded batch line failed: %s", job.id, exc.message)
