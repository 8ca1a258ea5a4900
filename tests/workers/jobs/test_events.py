"""The event publisher: seq order, coalescing by time and size, replay ids, cancel detection."""

from __future__ import annotations

import json

import redis

from workers.contract import CompletionResult, DoneEvent, JobKeys, StartEvent, parse_event
from workers.jobs.events import EventPublisher, delta_json, last_seq
from workers.llm.errors import RunFencedError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _events(client: redis.Redis, keys: JobKeys) -> list:
    return [parse_event(fields[b"e"]) for _, fields in client.xrange(keys.events)]


def test_coalesces_by_time_and_size(redis_client: redis.Redis) -> None:
    keys, clock = JobKeys("j1"), Clock()
    pub = EventPublisher(redis_client, keys, run=1, start_seq=-1, coalesce_s=0.05, coalesce_chars=10, clock=clock)
    pub.emit(StartEvent(job_id="j1", seq=0, model="openai:m"))
    pub.delta("a")  # first delta after a quiet period: published at once
    clock.now = 0.01
    pub.delta("b")  # within the window: buffered
    pub.delta("c")
    clock.now = 0.07
    pub.delta("d")  # window passed: "bcd" goes out
    pub.delta("0123456789")  # size limit reached: flushed at once
    clock.now = 0.08
    pub.delta("e")
    pub.emit(DoneEvent(job_id="j1", seq=0, result=CompletionResult(id="j1", status="succeeded")))
    events = _events(redis_client, keys)
    assert [(e.type, getattr(e, "text", None)) for e in events] == [
        ("start", None),
        ("delta", "a"),
        ("delta", "bcd"),
        ("delta", "0123456789"),
        ("delta", "e"),
        ("done", None),
    ]
    assert [e.seq for e in events] == list(range(6))
    assert last_seq(redis_client, keys) == 5
    assert 0 < redis_client.ttl(keys.events) <= 86_400


def test_stream_entry_ids_are_seqs_and_runs_continue(redis_client: redis.Redis) -> None:
    keys = JobKeys("j2")
    pub = EventPublisher(redis_client, keys, run=1, start_seq=-1, coalesce_s=0)
    pub.emit(StartEvent(job_id="j2", seq=0, model="openai:m"))
    pub.delta("x")
    # a redelivered job (run 2) continues the numbering, so replay stays ordered
    pub2 = EventPublisher(redis_client, keys, run=2, start_seq=last_seq(redis_client, keys), coalesce_s=0)
    pub2.emit(StartEvent(job_id="j2", seq=0, model="openai:m"))
    ids = [i.decode() for i, _ in redis_client.xrange(keys.events)]
    assert ids == ["0-1", "1-1", "2-1"]
    assert [e.run for e in _events(redis_client, keys)] == [1, 1, 2]


def test_flush_sees_cancellation_and_publishes_live(redis_client: redis.Redis) -> None:
    keys = JobKeys("j3")
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.channel)
    pub = EventPublisher(redis_client, keys, run=1, start_seq=-1, coalesce_s=0)
    pub.delta("hello")
    assert not pub.cancelled
    redis_client.set(keys.cancel, "1")
    pub.delta(" world")
    assert pub.cancelled
    live = []
    for _ in range(20):
        message = pubsub.get_message(timeout=0.2)
        if message:
            live.append(parse_event(message["data"]).text)
        if len(live) == 2:
            break
    assert live == ["hello", " world"]
    pubsub.close()


def test_non_streaming_jobs_publish_no_deltas(redis_client: redis.Redis) -> None:
    keys = JobKeys("j4")
    pub = EventPublisher(redis_client, keys, run=1, start_seq=-1, publish_deltas=False)
    pub.delta("hidden")
    pub.flush()
    assert redis_client.xlen(keys.events) == 0


def test_terminal_flush_writes_first_releases_the_claim_and_is_fenced(redis_client: redis.Redis) -> None:
    """The terminal flush is one script: the writes (the result) land before its events, the claim
    is released by it, and a run that no longer holds the claim writes nothing at all."""
    keys = JobKeys("j-term")
    redis_client.set(keys.claim, "tok-1", px=60_000)
    pub = EventPublisher(redis_client, keys, run=1, start_seq=-1, coalesce_s=0, token="tok-1", claim_lease_ms=60_000)
    pub.emit(StartEvent(job_id="j-term", seq=0, model="openai:m"))
    assert redis_client.get(keys.claim) == b"tok-1"  # an ordinary flush renews, never releases
    pub.delta("hi")
    # the result first: a subscriber woken by the live "done" can always read it
    seen: list[bytes | None] = []
    sub = redis_client.pubsub()
    sub.subscribe(keys.channel)
    sub.get_message(timeout=1)
    done = DoneEvent(job_id="j-term", seq=0, result=CompletionResult(id="j-term", status="succeeded"))
    writes = [("SET", keys.result, "stored", "EX", 60), ("RPUSH", "llmq:reply:t", "r"), ("EXPIRE", "llmq:reply:t", 60)]
    pub.emit_many([done], writes=writes, release_claim=True)
    for _ in range(2):
        message = sub.get_message(timeout=1)
        if message and message["type"] == "message":
            seen.append(redis_client.get(keys.result))
    sub.close()
    assert seen and all(v == b"stored" for v in seen)
    assert redis_client.lrange("llmq:reply:t", 0, -1) == [b"r"]
    assert redis_client.get(keys.claim) is None
    assert [e.type for e in _events(redis_client, keys)] == ["start", "delta", "done"]

    # run 2 lost its claim to run 3: its terminal flush writes no result, no event, no release
    other = JobKeys("j-fenced")
    redis_client.set(other.claim, "tok-3", px=60_000)
    stale = EventPublisher(redis_client, other, run=2, start_seq=-1, coalesce_s=0, token="tok-2")
    try:
        stale.emit_many([done], writes=[("SET", other.result, "stale")], release_claim=True)
    except RunFencedError:
        pass
    else:
        raise AssertionError("a fenced run's terminal flush must raise RunFencedError")
    assert redis_client.get(other.result) is None
    assert redis_client.xlen(other.events) == 0
    assert redis_client.get(other.claim) == b"tok-3"


def test_a_delta_events_json_is_what_json_dumps_writes() -> None:
    texts = ["", "plain", 'quote " and \\ backslash', "line\nbreak\ttab\x00\x1f\x7f", "é日本😀\u2028", "</script>"]
    for seq, text in enumerate(texts):
        for ts in (1765000000.123456, 0.1, 1e22):
            want = json.dumps(
                {"type": "delta", "job_id": 'j"1', "seq": seq, "run": 2, "ts": ts, "text": text},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            assert delta_json('j"1', seq, 2, ts, text) == want
