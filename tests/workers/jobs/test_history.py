"""The history summary built by hand on the hot path is exactly the contract's JobSummary, without message text."""

from __future__ import annotations

import pytest

from workers.contract import Attempt, CompletionJob, CompletionResult, ErrorInfo, Timings, Usage
from workers.contract.history import HistoryKeys, JobSummary, RequestSummary, day_of, expire_at
from workers.jobs.history import HistoryWriter, summary_json, trace_id_of
from workers.jobs.spans import job_trace_id

SECRET = "the launch code is xyzzy"


def _jobs() -> list[CompletionJob]:
    base = {"model": "openai:gpt-4o", "tenant": "team-x"}
    return [
        CompletionJob(**base, messages=[{"role": "user", "content": SECRET}]),
        CompletionJob(
            **base,
            messages=[{"role": "system", "content": SECRET}, {"role": "user", "content": SECRET}],
            fallbacks=["anthropic:claude-sonnet-4-5"],
            tools=["get_weather", {"type": "function", "function": {"name": "lookup"}}],
            stream=False,
            deadline_s=30,
            metadata={"custom_id": "c-1"},
            response_format={"type": "json_object"},
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            submitted_at=1_700_000_000.5,
            replay_of="job_original",
        ),
        CompletionJob(**base, prompt={"name": "greet", "version": 3, "variables": {"who": SECRET}}),
        CompletionJob(**base, template="Say {x}", variables={"x": SECRET}),
    ]


def _results(job: CompletionJob) -> list[CompletionResult]:
    return [
        CompletionResult(id=job.id, status="succeeded", content=SECRET, usage=Usage(prompt_tokens=3), cost_usd=0.1),
        CompletionResult(
            id=job.id,
            status="failed",
            content=SECRET,
            error=ErrorInfo(type="rate_limited", message="slow down", retryable=True, status=429),
            attempts=[Attempt(model="openai:gpt-4o", status="failed", error_type="rate_limited", wait_s=1.5)],
            timings=Timings(queued_s=0.5, total_s=3.0),
            model_used="openai:gpt-4o",
        ),
    ]


def _expected(job: CompletionJob, result: CompletionResult, replayable: bool) -> JobSummary:
    fmt = job.response_format
    prompt = job.prompt
    return JobSummary(
        id=job.id,
        tenant=job.tenant,
        status=result.status,
        model=job.model,
        model_used=result.model_used,
        fallbacks=job.fallbacks,
        error=result.error,
        attempts=result.attempts,
        cost_usd=result.cost_usd,
        usage=result.usage,
        timings=result.timings,
        submitted_at=job.submitted_at,
        finished_at=42.0,
        run=2,
        trace_id=job.traceparent.split("-")[1] if job.traceparent else None,
        replay_of=job.replay_of,
        replayable=replayable,
        request=RequestSummary(
            messages=len(job.messages or []),
            prompt=f"{prompt.name}@{prompt.version}" if prompt else None,
            template=job.template is not None,
            tools=[t if isinstance(t, str) else t.function.name for t in job.tools],
            max_tokens=job.max_tokens,
            stream=job.stream,
            deadline_s=job.deadline_s,
            response_format=fmt.type if fmt else None,
            metadata=job.metadata,
        ),
    )


@pytest.mark.parametrize("index", range(4))
def test_summary_is_the_contract_model_without_text(index: int) -> None:
    job = _jobs()[index]
    for result in _results(job):
        for replayable in (False, True):
            trace_id = trace_id_of(job, traced=False)
            raw = summary_json(job, result, finished_at=42.0, run=2, replayable=replayable, trace_id=trace_id)
            assert SECRET not in raw and "xyzzy" not in raw
            assert JobSummary.model_validate_json(raw) == _expected(job, result, replayable)


def test_writes_index_each_dimension_with_the_days_expiry() -> None:
    job = _jobs()[1]
    failed = _results(job)[1]
    failed.attempts.append(Attempt(model="anthropic:claude-sonnet-4-5", status="failed", error_type="overloaded"))
    failed.model_used = "anthropic:claude-sonnet-4-5"
    now = 1_765_000_000.0
    writes = HistoryWriter(3, clock=lambda: now).writes(job, failed, run=1)
    keys = HistoryKeys(day_of(now))
    zadds = {w[1] for w in writes if w[0] == "ZADD"}
    assert zadds == {
        keys.all,
        keys.tenant("team-x"),
        keys.status("failed"),
        keys.model("openai:gpt-4o"),
        keys.model("anthropic:claude-sonnet-4-5"),
        keys.error("rate_limited"),
        keys.error("overloaded"),
    }
    written = {w[1] for w in writes if w[0] in ("ZADD", "HSET")}
    expiring = {w[1]: w[2] for w in writes if w[0] == "EXPIREAT"}
    assert written == set(expiring) and set(expiring.values()) == {expire_at(keys.day, 3)}
    assert ("HSET", keys.requests, job.id, job.model_dump_json(exclude_none=True)) in writes
    succeeded = HistoryWriter(3, clock=lambda: now).writes(job, _results(job)[0])
    assert not any(w[1] == keys.requests for w in succeeded)  # only failed jobs keep their request
    assert not any(str(w[1]).startswith(f"{keys.base}:error:") for w in succeeded)
    assert all(w[1].startswith("llmq:history:{") for w in writes)  # one hash tag per day


def test_one_writer_moves_to_the_next_day_at_midnight_utc() -> None:
    """The writer keeps one day's keys and expiry between jobs: the job a microsecond before
    midnight UTC goes into that day, the next one into the new day, with the new day's expiry."""
    job = _jobs()[0]
    midnight = 1_765_065_600.0  # 2025-12-07T00:00:00Z
    clock = [midnight - 1e-6]
    writer = HistoryWriter(2, clock=lambda: clock[0])
    days = []
    for now in (midnight - 1e-6, midnight, midnight + 86_399.5, midnight - 1.0):
        clock[0] = now
        [hset, expire, *_] = writer.writes(job, _results(job)[0])
        days.append((hset[1], expire[2]))
        assert (hset[1], expire[2]) == (HistoryKeys(day_of(now)).jobs, expire_at(day_of(now), 2))
    assert [d[0] for d in days] == [
        "llmq:history:{2025-12-06}:jobs",
        "llmq:history:{2025-12-07}:jobs",
        "llmq:history:{2025-12-07}:jobs",
        "llmq:history:{2025-12-06}:jobs",  # a clock stepped back: that day again
    ]


def test_an_unreadable_payloads_stand_in_is_indexed_but_not_replayable() -> None:
    """``JobRunner.reject_invalid`` ends a payload the worker could not read with a stand-in job."""
    stand_in = CompletionJob.model_construct(id="job_bad", model="invalid", stream=True, tenant="default", metadata={})
    result = CompletionResult(id="job_bad", status="failed", error=ErrorInfo(type="bad_request", message="invalid"))
    writes = HistoryWriter(1, clock=lambda: 1_765_000_000.0).writes(stand_in, result)
    keys = HistoryKeys(day_of(1_765_000_000.0))
    assert not any(w[1] == keys.requests for w in writes)
    summary = JobSummary.model_validate_json(next(w[3] for w in writes if w[0] == "HSET" and w[1] == keys.jobs))
    assert summary.status == "failed" and not summary.replayable and summary.error.type == "bad_request"  # type: ignore[union-attr]


def test_the_summary_names_the_trace_the_jobs_spans_are_in() -> None:
    """A job sent with a ``traceparent`` is in its caller's trace; one sent without is in the trace
    derived from its id when the worker traces (``llmq jobs show`` prints it), in none otherwise."""
    plain, traced_job = _jobs()[0], _jobs()[1]
    result = _results(plain)[0]

    def trace(job: CompletionJob, traced: bool) -> str | None:
        writes = HistoryWriter(1, traced=traced, clock=lambda: 1_765_000_000.0).writes(job, result)
        raw = next(w[3] for w in writes if w[0] == "HSET")
        return JobSummary.model_validate_json(str(raw)).trace_id

    assert trace(plain, traced=True) == format(job_trace_id(plain.id), "032x")
    assert trace(plain, traced=False) is None
    assert trace(traced_job, traced=True) == trace(traced_job, traced=False) == "0af7651916cd43dd8448eb211c80319c"
