"""The response cache and single flight through the real queue: producer -> Redis -> worker(s) -> simulator."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from llmq.devstack import LocalStack
from producers import Client
from producers.client import make_celery
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.brokers import deliver_again
from tests.support.spend import global_spent_usd
from tests.support.tools import tools_worker_settings
from tests.support.waits import until
from workers.contract import DEFAULT_QUEUE, CompletionJob, CompletionResult
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MODEL = "openai:gpt-4o-mini"
PROMPT = [{"role": "user", "content": "what is the capital of the queue"}]
CACHE = {"ttl_s": 600}


def _job(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": PROMPT, "max_tokens": 20, "cache": CACHE, **extra}


def _answer(r: CompletionResult) -> tuple[object, ...]:
    return (r.status, r.content, r.finish_reason, r.model_used, r.usage.prompt_tokens, r.usage.completion_tokens)


def _configure(simulator: SimulatorThread, changes: dict[str, object]) -> None:
    """Change the simulator's pacing and fault rates live (``POST /_sim/config``)."""
    request = urllib.request.Request(
        f"{simulator.url}/_sim/config", data=json.dumps(changes).encode(), method="POST",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _entries(redis_url: str) -> int:
    return int(redis.Redis.from_url(redis_url).zcard("llmq:{cache}:index"))


def test_the_same_request_twice_makes_one_call_and_the_second_costs_nothing(
    worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    first = client.submit(_job(tags=["faq"])).result(timeout=30)
    assert first.status == "succeeded" and not first.cached and first.cost_usd and first.cost_usd > 0
    spent = global_spent_usd(redis_url)
    handle = client.submit(_job(stream=True, tags=["faq"]))
    events = list(handle.stream(timeout=30))
    second = handle.result(timeout=5)
    assert simulator.simulator.stats.requests == 1
    assert second.cached and second.cost_usd == 0 and _answer(second) == _answer(first)
    assert second.id != first.id and second.tags == ["faq"]
    # the same events a live run sends: start, the text, usage, done
    assert [e.type for e in events] == ["start", "delta", "usage", "done"]
    assert "".join(e.text for e in events if e.type == "delta") == first.content
    assert global_spent_usd(redis_url) == spent  # nothing charged for the hit
    # an alias resolving to the same chain is the same request
    via_route = client.submit(_job(model="default")).result(timeout=30)
    assert via_route.cached and simulator.simulator.stats.requests == 1


def test_a_served_answer_is_the_whole_answer_logprobs_and_alternatives_too(
    worker, client: Client, simulator: SimulatorThread
) -> None:
    """Every answer field of the stored result comes back (the job's own fields stay its own)."""
    sampled = {"n": 2, "logprobs": True, "top_logprobs": 1, "metadata": {"who": "first"}}
    first = client.submit(_job(**sampled)).result(timeout=30)
    second = client.submit(_job(**{**sampled, "metadata": {"who": "second"}})).result(timeout=30)
    assert simulator.simulator.stats.requests == 1 and second.cached and not first.cached
    assert first.logprobs and second.logprobs == first.logprobs
    assert [a.index for a in second.alternatives] == [1] and second.alternatives == first.alternatives
    assert second.metadata == {"who": "second"} and second.id != first.id


def test_what_is_not_clean_is_not_stored(worker, client: Client, simulator: SimulatorThread, redis_url: str) -> None:
    refused = [client.submit(_job(model=f"{MODEL}~refusal")).result(timeout=30) for _ in range(2)]
    assert [r.refusal is not None and not r.cached for r in refused] == [True, True]
    failed = [client.submit(_job(model=f"{MODEL}~400")).result(timeout=30) for _ in range(2)]
    assert [r.status for r in failed] == ["failed", "failed"]
    cut = [client.submit(_job(model=f"{MODEL}~midstream")).result(timeout=30) for _ in range(2)]
    assert [r.status for r in cut] == ["failed", "failed"]
    assert simulator.simulator.stats.requests == 6 and _entries(redis_url) == 0
    # sampled answers only when the job says so
    warm = [client.submit(_job(temperature=0.7)).result(timeout=30) for _ in range(2)]
    assert not any(r.cached for r in warm) and simulator.simulator.stats.requests == 8
    shared = [client.submit(_job(temperature=0.7, cache={"ttl_s": 60, "sampled": True})).result(timeout=30)
              for _ in range(2)]  # fmt: skip
    assert [r.cached for r in shared] == [False, True] and simulator.simulator.stats.requests == 9


class LeadsAtTheJobLine(logging.Handler):
    """Records, when each job's final log line is written (after its terminal write, before the run's
    own clean-up), how many of the cache's leads in Redis are still that job's."""

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.redis = redis.Redis.from_url(redis_url)
        self.seen: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "llmq", None) or {}  # workers/jobs/observe.py's structured fields
        if fields.get("event") == "job":
            job_id = fields["job_id"]  # a lead holds its leader's job id: count this job's own
            self.seen[job_id] = sum(
                1 for key in self.redis.keys("llmq:{cache}:lead:*") if self.redis.get(key) == job_id.encode()
            )


def test_a_lead_ends_with_its_result_whatever_the_answer(
    worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    """A caller who saw a refusal and asks again gets a call, not the refusal shared as cached: the
    lead ended in the same write as the result (it ended after it, in the run's clean-up, and a job
    submitted in between followed the finished lead)."""
    handler = LeadsAtTheJobLine(redis_url)
    jobs_log = logging.getLogger("llmq.jobs")
    jobs_log.addHandler(handler)
    try:
        ids = [
            client.submit(_job(model=f"{MODEL}~{fault}")).result(timeout=30).id for fault in ("refusal", "400", "ok")
        ]
        # each job's log line comes just after its result's write: the last one may still be on its way
        until(lambda: len(handler.seen) == len(ids), "the three jobs' log lines", 30)
    finally:
        jobs_log.removeHandler(handler)
        handler.redis.close()
    assert handler.seen == {job_id: 0 for job_id in ids}  # no lead of a job left once its result is written
    assert _entries(redis_url) == 1  # only the clean answer stored


def test_filtered_and_invalid_structured_answers_are_not_stored(
    worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    """A content filter's answer and a structured output still invalid after its repairs are
    asked again (and not stored); the same structured job answered validly is stored."""
    filtered = [client.submit(_job(model=f"{MODEL}~filter")).result(timeout=30) for _ in range(2)]
    assert not any(r.cached for r in filtered)
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    invalid = [
        client.submit(_job(model=f"{MODEL}~badjson*", response_format=schema, max_repairs=1)).result(timeout=30)
        for _ in range(2)
    ]
    assert [r.status for r in invalid] == ["failed", "failed"] and not any(r.cached for r in invalid)
    calls = simulator.simulator.stats.requests
    assert calls == 2 + 2 * 2 and _entries(redis_url) == 0
    valid = [client.submit(_job(response_format=schema)).result(timeout=30) for _ in range(2)]
    assert [r.cached for r in valid] == [False, True] and valid[1].parsed == valid[0].parsed is not None
    assert simulator.simulator.stats.requests == calls + 1


def test_tenant_scope_keeps_tenants_apart_and_global_scope_shares(
    worker, client: Client, simulator: SimulatorThread
) -> None:
    a = client.submit(_job(tenant="a")).result(timeout=30)
    b = client.submit(_job(tenant="b")).result(timeout=30)
    assert not a.cached and not b.cached and simulator.simulator.stats.requests == 2
    assert client.submit(_job(tenant="a")).result(timeout=30).cached
    glob = {"ttl_s": 600, "scope": "global"}
    assert not client.submit(_job(tenant="c", cache=glob)).result(timeout=30).cached
    assert client.submit(_job(tenant="d", cache=glob)).result(timeout=30).cached
    assert simulator.simulator.stats.requests == 3


def test_ttl_and_purge(worker, client: Client, simulator: SimulatorThread, redis_url: str) -> None:
    client.submit(_job(cache={"ttl_s": 1}, tenant="short")).result(timeout=30)
    r = redis.Redis.from_url(redis_url)
    until(lambda: not r.exists(f"llmq:{{cache}}:e:{r.zrange('llmq:{cache}:index', 0, 0)[0].decode()}"), "expiry", 10)
    assert not client.submit(_job(cache={"ttl_s": 600}, tenant="short")).result(timeout=30).cached
    for tenant in ("a", "b"):
        client.submit(_job(tenant=tenant)).result(timeout=30)
    calls = simulator.simulator.stats.requests
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}, "LLMQ_REDIS_URL": redis_url}
    purge = subprocess.run([sys.executable, "-m", "llmq.cli", "cache", "purge", "--tenant", "a"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert purge.returncode == 0 and purge.stdout.strip() == "purged 1 response cache entries of tenant a"
    assert not client.submit(_job(tenant="a")).result(timeout=30).cached
    assert client.submit(_job(tenant="b")).result(timeout=30).cached
    assert simulator.simulator.stats.requests == calls + 1
    everything = subprocess.run([sys.executable, "-m", "llmq.cli", "cache", "purge"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert everything.returncode == 0 and _entries(redis_url) == 0


def test_a_failed_leader_lets_a_waiting_duplicate_run(
    worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    """Two identical jobs at once: one leads, its stream fails half way (the simulator's midstream
    fault, for requests made while it is on); the one following it takes over and answers."""
    sim = simulator.simulator
    _configure(simulator, {"fault_rates": {"midstream": 1.0}, "tokens_per_s": 4.0})
    handles = [client.submit(_job()) for _ in range(2)]
    until(lambda: sim.stats.requests >= 1, "the leader's request", 30)
    _configure(simulator, {"fault_rates": {}})
    results = {h.id: h.result(timeout=60) for h in handles}
    statuses = sorted(r.status for r in results.values())
    assert statuses == ["failed", "succeeded"] and sim.stats.requests == 2
    winner = next(h for h in handles if results[h.id].status == "succeeded")
    events = list(winner.stream(timeout=5))
    # it showed the leader's text, then started over with its own answer
    kinds = [e.type for e in events]
    assert kinds[0] == "start" and "repair" in kinds and kinds[-1] == "done"
    after = kinds.index("repair")
    assert "".join(e.text for e in events[after:] if e.type == "delta") == results[winner.id].content
    assert not results[winner.id].cached and _entries(redis_url) == 1


def test_a_streamed_follower_of_a_whole_body_leader_streams_the_answer(
    worker, client: Client, simulator: SimulatorThread, redis_client: redis.Redis
) -> None:
    """The leader asked for no deltas (``stream: false``): a streamed job sharing its call still
    gets the text as deltas, as its own live run would have sent them."""
    sim = simulator.simulator
    sim.config.tokens_per_s = 2.0  # 20 tokens: ~10 s, the follower arrives while the leader calls
    leader = client.submit(_job(stream=False))
    until(lambda: sim.stats.requests >= 1, "the leader's request", 30)
    follower = client.submit(_job(stream=True))
    events = []
    for event in follower.stream(timeout=60):
        if not events:  # it started while the leader was still calling: it follows, not a hit
            assert not redis_client.exists(f"llmq:job:{{{leader.id}}}:result")
        events.append(event)
    first, second = leader.result(timeout=30), follower.result(timeout=30)
    assert sim.stats.requests == 1 and second.cached and not first.cached
    assert events[0].type == "start" and events[-1].type == "done"
    assert "".join(e.text for e in events if e.type == "delta") == first.content != ""


def test_a_cancelled_leader_hands_the_call_to_its_follower_and_a_cancelled_follower_stops(
    worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    """The consumer of the leading job cancels it mid-call: the job following it calls itself and
    answers (stored); a follower cancelled while it waits ends cancelled, the leader unaffected."""
    sim, r = simulator.simulator, redis.Redis.from_url(redis_url)
    sim.config.tokens_per_s = 2.0  # ~10 s a call: the follower arrives while it runs
    leader = client.submit(_job())
    until(lambda: sim.stats.requests >= 1, "the leader's request", 30)
    follower = client.submit(_job())
    until(lambda: r.xlen(f"llmq:job:{{{follower.id}}}:events"), "the follower's start", 30)
    assert leader.cancel()
    cancelled, answered = leader.result(timeout=60), follower.result(timeout=60)
    assert cancelled.status == "cancelled" and answered.status == "succeeded" and not answered.cached
    assert sim.stats.requests == 2 and _entries(redis_url) == 1
    # now the other way round: the follower is cancelled, its leader goes on
    lead2 = client.submit(_job(max_tokens=21))
    until(lambda: sim.stats.requests >= 3, "the second leader's request", 30)
    follow2 = client.submit(_job(max_tokens=21))
    until(lambda: r.xlen(f"llmq:job:{{{follow2.id}}}:events"), "the follower's start", 30)
    assert follow2.cancel()
    assert follow2.result(timeout=60).status == "cancelled"
    assert lead2.result(timeout=60).status == "succeeded" and sim.stats.requests == 3


def test_a_duplicate_delivery_of_the_leader_leaves_its_lead_in_place(
    worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    """The leading job's message is delivered again while it calls (a broker redelivery): that run
    finds the job busy and steps aside, without ending the lead the running one holds, so an
    identical job arriving next still follows it instead of calling a second time."""
    sim, r = simulator.simulator, redis.Redis.from_url(redis_url)
    sim.config.tokens_per_s = (
        0.5  # ~40 s a call: the leader still calls when the duplicate runs, however slow the machine
    )
    leader = client.submit(_job(id="dup-lead"))
    until(lambda: sim.stats.requests >= 1, "the leader's request", 30)
    (lead,) = r.keys("llmq:{cache}:lead:*")
    before = r.pttl(lead)
    deliver_again(client, r, CompletionJob.model_validate(_job(id="dup-lead")))
    # the duplicate ran once its lookup touched the lead: renewed it, or (before the fix) ended it
    until(lambda: r.pttl(lead) > before or not r.exists(lead), "the duplicate's claim", 30)
    assert sim.stats.open_streams == 1  # the leader is still calling: its lead must be in place
    assert r.get(lead) == b"dup-lead"
    follower = client.submit(_job())
    assert leader.result(timeout=120).status == "succeeded"
    assert follower.result(timeout=120).cached and sim.stats.requests == 1


@pytest.fixture
def route_worker(worker_settings: Settings, simulator: SimulatorThread, tmp_path: Path) -> Iterator[object]:
    """A worker whose config caches every job sent to the ``cheap`` route."""
    config = tmp_path / "llmq.toml"
    config.write_text('[routes]\ncheap = ["openai:gpt-4o-mini"]\n\n[cache.routes]\ncheap = { ttl_s = 600 }\n')
    app = create_app(
        worker_settings.model_copy(update={"config": str(config)}), provider_env=provider_env(simulator.url)
    )
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10) as w:
        yield w
    close_runner(app)


def test_a_route_in_the_config_asks_for_the_cache(route_worker, client: Client, simulator: SimulatorThread) -> None:
    """Jobs sent to a cached route are cached without asking; the same request to the model by its
    own name is not (the route asks, not the model); a sampled one is not either."""
    job = {"model": "cheap", "messages": PROMPT, "max_tokens": 20}
    first, second = (client.submit(job).result(timeout=30) for _ in range(2))
    assert (first.cached, second.cached, simulator.simulator.stats.requests) == (False, True, 1)
    assert not client.submit({**job, "model": MODEL}).result(timeout=30).cached
    assert not client.submit({**job, "temperature": 0.9}).result(timeout=30).cached
    assert simulator.simulator.stats.requests == 3


@pytest.fixture
def tools_worker(redis_url: str, simulator: SimulatorThread, fresh_tools: None) -> Iterator[object]:
    """A worker that loads the test tool module (``get_capital``)."""
    app = create_app(tools_worker_settings(redis_url, concurrency=4), provider_env=provider_env(simulator.url))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10) as w:
        yield w
    close_runner(app)


def test_a_follower_of_a_tool_loop_shows_its_tool_calls_and_results(
    tools_worker, client: Client, simulator: SimulatorThread
) -> None:
    """A job sharing an identical tool-loop job's call shows what its own loop would have shown:
    the tool calls and results of each turn, then the answer."""
    sim = simulator.simulator
    # the answer's turn starts 10 s late: the follower arrives while the leader is in its loop
    job = _job(model=f"{MODEL}~tools,slow@10", tools=["get_capital"], max_turns=3)
    leader = client.submit(job)
    until(lambda: sim.stats.requests >= 1, "the leader's first turn", 30)
    follower = client.submit(job)
    theirs, ours = list(leader.stream(timeout=60)), list(follower.stream(timeout=60))
    assert follower.result(timeout=5).cached and sim.stats.requests == 2  # the leader's two turns only
    kinds = [e.type for e in theirs if e.type != "delta"]
    assert "tool_result" in kinds and [e.type for e in ours if e.type != "delta"] == kinds
    tool_events = [(e.type, e.job_id) for e in ours if e.type in ("tool_call", "tool_result")]
    assert tool_events and all(job_id == follower.id for _, job_id in tool_events)


# --- across two worker processes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(redis_server_url: str) -> Iterator[LocalStack]:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_server_url.rsplit("/", 1)[0] + "/6"}
    redis.Redis.from_url(env["LLMQ_REDIS_URL"]).flushdb()
    with LocalStack(env=env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=10.0)  # 2 s per answer: every job arrives while it runs
        for name in ("cache-a", "cache-b"):
            stack.start_worker(concurrency=32, name=name)
        stack.wait_for_workers(2)
        yield stack


def test_fifty_identical_jobs_across_two_workers_make_one_call(two_workers: LocalStack) -> None:
    with Client(two_workers.redis_url) as client:
        handles = [client.submit(_job(tenant=f"t{i % 5}", cache={"ttl_s": 600, "scope": "global"})) for i in range(50)]
        results = [h.result(timeout=120) for h in handles]
    assert all(r.status == "succeeded" for r in results), [r.error for r in results if r.error]
    with urllib.request.urlopen(f"{two_workers.simulator_url}/_sim/stats", timeout=5) as response:
        stats = json.loads(response.read())
    assert stats["requests"] == 1
    assert sum(1 for r in results if not r.cached) == 1
    assert len({_answer(r) for r in results}) == 1
    paid = [r.cost_usd for r in results if not r.cached]
    assert paid[0] and paid[0] > 0 and all(r.cost_usd == 0 for r in results if r.cached)


@pytest.fixture
def slow_two_workers(redis_server_url: str) -> Iterator[tuple[LocalStack, dict[str, subprocess.Popen[bytes]]]]:
    """Two worker processes with the shipped claim lease, a simulator answering in ~10 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env["LLMQ_REDIS_URL"] = redis_server_url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(env["LLMQ_REDIS_URL"]).flushdb()
    with LocalStack(env=env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=2.0)
        workers = {name: stack.start_worker(concurrency=8, name=name) for name in ("lead-a", "lead-b")}
        stack.wait_for_workers(2)
        try:
            yield stack, workers
        finally:
            redis.Redis.from_url(env["LLMQ_REDIS_URL"]).flushdb()


def _holder(stack: LocalStack, job_id: str) -> str:
    """The worker name whose active tasks include ``job_id``."""
    app = make_celery(stack.redis_url, DEFAULT_QUEUE)

    def holder() -> str | None:
        for hostname, tasks in (app.control.inspect(timeout=2).active() or {}).items():
            if any(job_id in str(t.get("args")) for t in tasks):
                return str(hostname).split("@", 1)[0]
        return None

    try:
        return until(holder, f"a worker to report {job_id} as active", 120, 0)
    finally:
        app.close()


@pytest.mark.slow
def test_a_leader_killed_mid_call_leaves_no_follower_hanging(
    slow_two_workers: tuple[LocalStack, dict[str, subprocess.Popen[bytes]]],
) -> None:
    """The worker running the leader is SIGKILLed while it streams: once its claim lapses, one job
    (a follower, or the leader run again) calls; every job ends with that one answer."""
    stack, workers = slow_two_workers
    with Client(stack.redis_url) as client:
        leader = client.submit(_job(id="lead-1"))
        for event in leader.stream(timeout=120):
            if event.type == "delta":
                break
        victim = _holder(stack, "lead-1")
        followers = [client.submit(_job()) for _ in range(4)]
        os.killpg(workers[victim].pid, signal.SIGKILL)
        workers[victim].wait(30)
        results = [h.result(timeout=240) for h in [leader, *followers]]
    assert [r.status for r in results] == ["succeeded"] * 5, [r.error for r in results]
    assert len({r.content for r in results}) == 1
    with urllib.request.urlopen(f"{stack.simulator_url}/_sim/stats", timeout=5) as response:
        assert json.loads(response.read())["requests"] == 2  # the killed call and one more
    assert sum(1 for r in results if not r.cached) == 1
