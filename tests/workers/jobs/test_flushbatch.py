"""The flush batcher: many jobs' flushes in one round trip, each caller with its own outcome.

Real Redis throughout; a server of the test's own where it is killed or stopped. Batches are made
deterministic with the batcher's ``hold()`` seam: callers queue up while it is held, then go out
as one batch (asserted by the round-trip counter).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from llmq.localredis import ManagedRedis
from tests.support.waits import until
from workers.connections.redisclient import redis_client
from workers.contract import CompletionResult, DoneEvent, JobKeys, StartEvent, parse_event
from workers.jobs.events import EventPublisher, flush_batcher
from workers.jobs.flushbatch import FlushBatcher, FlushBatcherClosedError
from workers.llm.errors import RunFencedError

HANG_GUARD_S = 30.0


@pytest.fixture
def batcher(redis_client: redis.Redis) -> Iterator[FlushBatcher]:
    flusher = flush_batcher(redis_client)
    yield flusher
    flusher.close()


def _events(client: redis.Redis, keys: JobKeys) -> list:
    return [parse_event(fields[b"e"]) for _, fields in client.xrange(keys.events)]


def _publisher(client: redis.Redis, job_id: str, flusher: FlushBatcher, token: str = "") -> EventPublisher:
    keys = JobKeys(job_id)
    if token:
        client.set(keys.claim, token, px=60_000)
    return EventPublisher(
        client, keys, run=1, start_seq=-1, coalesce_s=0, token=token, claim_lease_ms=60_000, flusher=flusher
    )


def _in_threads(calls: dict[str, Callable[[], object]]) -> tuple[dict[str, threading.Thread], dict[str, object]]:
    """Start one thread per call; their outcomes (return value or exception) land in the dict."""
    outcomes: dict[str, object] = {}

    def run(name: str, fn: Callable[[], object]) -> None:
        try:
            outcomes[name] = fn()
        except Exception as exc:
            outcomes[name] = exc

    threads = {name: threading.Thread(target=run, args=(name, fn), daemon=True) for name, fn in calls.items()}
    for t in threads.values():
        t.start()
    return threads, outcomes


def _join(threads: dict[str, threading.Thread]) -> None:
    for t in threads.values():
        t.join(HANG_GUARD_S)
    assert not [name for name, t in threads.items() if t.is_alive()], "a caller hangs"


def test_many_concurrent_publishers_keep_every_event_in_order(redis_client: redis.Redis, batcher: FlushBatcher) -> None:
    jobs, deltas = 16, 40

    def job(i: int) -> None:
        pub = _publisher(redis_client, f"many-{i}", batcher, token=f"tok-{i}")
        pub.emit(StartEvent(job_id=f"many-{i}", seq=0, model="openai:m"))
        for k in range(deltas):
            pub.delta(f"{i}.{k} ")  # coalesce_s=0: every delta is a flush of its own
        done = DoneEvent(job_id=f"many-{i}", seq=0, result=CompletionResult(id=f"many-{i}", status="succeeded"))
        pub.emit_many([done], writes=[("SET", JobKeys(f"many-{i}").result, "r", "EX", 60)], release_claim=True)

    _publisher(redis_client, "many-warm", batcher).delta("warm")  # the script loaded: no re-sends below
    sent = batcher.commands
    threads, outcomes = _in_threads({str(i): (lambda i=i: job(i)) for i in range(jobs)})
    _join(threads)
    assert outcomes == dict.fromkeys(map(str, range(jobs)))
    for i in range(jobs):
        keys = JobKeys(f"many-{i}")
        events = _events(redis_client, keys)
        assert [e.seq for e in events] == list(range(deltas + 2))
        assert [e.type for e in events] == ["start", *["delta"] * deltas, "done"]
        assert [e.text for e in events[1:-1]] == [f"{i}.{k} " for k in range(deltas)]
        assert redis_client.get(keys.result) == b"r" and redis_client.get(keys.claim) is None
    assert batcher.commands - sent == jobs * (deltas + 2)
    print(f"{batcher.commands} flushes in {batcher.round_trips} round trips")


def test_one_batch_gives_each_caller_its_own_outcome(redis_client: redis.Redis, batcher: FlushBatcher) -> None:
    """Fencing, cancel and a Redis error reach their own caller only; the others in the batch succeed."""
    pubs = {name: _publisher(redis_client, f"own-{name}", batcher, token=f"tok-{name}") for name in "abcd"}
    for name, pub in pubs.items():
        pub.emit(StartEvent(job_id=f"own-{name}", seq=0, model="openai:m"))
    trips = batcher.round_trips
    with batcher.hold():
        redis_client.set(JobKeys("own-b").cancel, "1")
        redis_client.set(JobKeys("own-c").claim, "tok-other", px=60_000)  # another run took c's job
        redis_client.delete(JobKeys("own-d").events)
        redis_client.set(JobKeys("own-d").events, "not a stream")  # d's XADD fails in the script
        threads, outcomes = _in_threads({name: (lambda p=pub: p.delta("x")) for name, pub in pubs.items()})
        until(lambda: batcher.queued == 4, "four queued flushes", HANG_GUARD_S)
    _join(threads)
    assert batcher.round_trips == trips + 1  # one batch
    assert outcomes["a"] is None and outcomes["b"] is None
    assert isinstance(outcomes["c"], RunFencedError)
    assert isinstance(outcomes["d"], redis.ResponseError) and not isinstance(outcomes["d"], RunFencedError)
    assert [p.cancelled for p in pubs.values()] == [False, True, False, False]

    # the fenced run stays fenced and writes nothing; the others go on
    with pytest.raises(RunFencedError):
        pubs["c"].delta("y")
    pubs["a"].delta("y")
    assert [e.type for e in _events(redis_client, JobKeys("own-c"))] == ["start"]
    assert [getattr(e, "text", None) for e in _events(redis_client, JobKeys("own-a"))] == [None, "x", "y"]
    assert [e.type for e in _events(redis_client, JobKeys("own-b"))] == ["start", "delta"]


def test_script_flush_between_batches_loads_the_script_again(redis_client: redis.Redis, batcher: FlushBatcher) -> None:
    pubs = [_publisher(redis_client, f"noscript-{i}", batcher) for i in range(3)]
    for pub in pubs:
        pub.delta("before ")
    redis_client.script_flush()
    trips = batcher.round_trips
    with batcher.hold():
        threads, outcomes = _in_threads({str(i): (lambda p=pub: p.delta("after")) for i, pub in enumerate(pubs)})
        until(lambda: batcher.queued == 3, "three queued flushes", HANG_GUARD_S)
    _join(threads)
    assert outcomes == {"0": None, "1": None, "2": None}
    assert batcher.round_trips == trips + 3  # the batch (NOSCRIPT each), SCRIPT LOAD, the batch again
    for i in range(3):
        assert [e.text for e in _events(redis_client, JobKeys(f"noscript-{i}"))] == ["before ", "after"]


def test_redis_killed_mid_run_fails_the_callers_and_nobody_hangs() -> None:
    server = ManagedRedis().start()
    client = redis_client(server.url, max_connections=20)  # the worker's kind of client (no retries)
    batcher = flush_batcher(client)
    sent = [0]
    lock = threading.Lock()

    def job(i: int) -> None:
        pub = _publisher(client, f"killed-{i}", batcher, token=f"tok-{i}")
        while True:  # until Redis goes away: the error must reach every caller
            pub.delta("x")
            with lock:
                sent[0] += 1

    try:
        threads, outcomes = _in_threads({str(i): (lambda i=i: job(i)) for i in range(8)})
        until(lambda: sent[0] >= 200, "flushes before the kill", HANG_GUARD_S)
        server.kill()
        _join(threads)
        assert len(outcomes) == 8
        assert all(isinstance(e, redis.ConnectionError) for e in outcomes.values()), outcomes

        # Redis back (empty: no script cached): the same batcher serves new flushes
        server.start()
        pub = _publisher(client, "killed-after", batcher, token="tok-after")
        pub.delta("again")
        assert [e.text for e in _events(client, JobKeys("killed-after"))] == ["again"]
    finally:
        batcher.close()
        client.close()
        server.stop()


def test_close_sends_what_is_queued_and_later_flushes_go_direct(
    redis_client: redis.Redis, batcher: FlushBatcher
) -> None:
    pubs = [_publisher(redis_client, f"close-{i}", batcher) for i in range(5)]
    with batcher.hold():
        threads, outcomes = _in_threads({str(i): (lambda p=pub: p.delta("queued")) for i, pub in enumerate(pubs)})
        until(lambda: batcher.queued == 5, "five queued flushes", HANG_GUARD_S)
        batcher.close()  # inside hold(): close still drains
    _join(threads)
    assert outcomes == dict.fromkeys(map(str, range(5)))
    trips = batcher.round_trips
    pubs[0].delta(" direct")  # closed: a direct call, not a batch
    assert batcher.round_trips == trips
    assert [e.text for e in _events(redis_client, JobKeys("close-0"))] == ["queued", " direct"]
    for i in range(1, 5):
        assert [e.text for e in _events(redis_client, JobKeys(f"close-{i}"))] == ["queued"]


def test_close_with_a_batch_stuck_on_the_wire_leaves_nobody_waiting() -> None:
    """Redis stopped (SIGSTOP) with one batch on the wire and two flushes queued behind it: close()
    fails the one on the wire (its outcome is unknown) and hands the queued ones to direct calls."""
    server = ManagedRedis().start()
    client = redis_client(server.url, max_connections=20)
    batcher = flush_batcher(client, drain_s=0.5)
    pubs = [_publisher(client, f"stuck-{i}", batcher) for i in range(3)]
    assert server.process is not None
    pid = server.process.pid
    try:
        pubs[0].delta("warm ")  # connection made, script loaded
        trips = batcher.round_trips
        os.kill(pid, signal.SIGSTOP)
        first, first_outcome = _in_threads({"0": lambda: pubs[0].delta("on the wire")})
        until(lambda: batcher.round_trips == trips + 1, "the first batch sent", HANG_GUARD_S)
        rest, rest_outcomes = _in_threads({str(i): (lambda p=pubs[i]: p.delta("queued")) for i in (1, 2)})
        until(lambda: batcher.queued == 2, "two queued flushes", HANG_GUARD_S)
        batcher.close()
        _join(first)  # while Redis is still stopped
        assert isinstance(first_outcome["0"], FlushBatcherClosedError)
        assert isinstance(first_outcome["0"], redis.ConnectionError)  # the job treats it as a lost Redis
        os.kill(pid, signal.SIGCONT)
        _join(rest)  # their direct calls go through once Redis runs again
        assert rest_outcomes == {"1": None, "2": None}
        for i in (1, 2):
            assert [e.text for e in _events(client, JobKeys(f"stuck-{i}"))] == ["queued"]
    finally:
        os.kill(pid, signal.SIGCONT)
        batcher.close()
        client.close()
        server.stop()


_GEVENT_PROGRAM = """
from gevent import monkey
monkey.patch_all()
import sys
import gevent
import redis
from workers.contract import JobKeys
from workers.jobs.events import EventPublisher, flush_batcher

client = redis.Redis.from_url(sys.argv[1])
batcher = flush_batcher(client)

def job(i):
    pub = EventPublisher(client, JobKeys(f"gevent-{i}"), run=1, start_seq=-1, coalesce_s=0, flusher=batcher)
    for k in range(20):
        pub.delta(f"{k} ")

gevent.joinall([gevent.spawn(job, i) for i in range(50)], raise_error=True)
batcher.close()
print(batcher.commands, batcher.round_trips)
"""


def test_greenlets_share_the_batcher_under_gevent(redis_url: str) -> None:
    """Monkey-patched like a ``-P gevent`` worker (a process of its own): the batcher is a greenlet."""
    done = subprocess.run(
        [sys.executable, "-c", _GEVENT_PROGRAM, redis_url],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert done.returncode == 0, done.stderr
    commands, round_trips = map(int, done.stdout.split())
    assert commands >= 50 * 20 and round_trips < commands  # greenlets' flushes travelled together
    client = redis.Redis.from_url(redis_url)
    try:
        for i in range(50):
            assert [e.text for e in _events(client, JobKeys(f"gevent-{i}"))] == [f"{k} " for k in range(20)]
    finally:
        client.close()


class _CountingPool(redis.ConnectionPool):
    """A real pool that counts the connections it lends (how often the batcher checks one out)."""

    lent = 0

    def get_connection(self, *args: object, **kwargs: object) -> redis.connection.ConnectionInterface:
        type(self).lent += 1
        return super().get_connection(*args, **kwargs)  # type: ignore[arg-type]


def test_batches_share_one_connection_given_back_at_close(redis_url: str, redis_client: redis.Redis) -> None:
    """The batcher keeps the connection it was lent across batches (no checkout per batch), rides out
    a server that dropped it, and gives it back to the pool when it stops."""
    _CountingPool.lent = 0
    pool = _CountingPool.from_url(redis_url, client_name="held-by-batcher")
    flusher = flush_batcher(redis.Redis(connection_pool=pool))  # the batcher's own pool, counted
    try:
        for n in range(5):
            _publisher(redis_client, f"held-{n}", flusher).delta(f"delta {n}")  # each a batch of its own
        assert flusher.round_trips >= 5 and _CountingPool.lent == 1
        (held,) = [c for c in redis_client.client_list() if c["name"] == "held-by-batcher"]
        redis_client.client_kill_filter(_id=held["id"])  # Redis drops the batcher's connection
        _publisher(redis_client, "held-after-kill", flusher).delta("after")
        assert [e.text for e in _events(redis_client, JobKeys("held-after-kill"))] == ["after"]
        assert _CountingPool.lent == 1
    finally:
        flusher.close()
    assert not pool._in_use_connections and len(pool._available_connections) == 1
    pool.disconnect()
