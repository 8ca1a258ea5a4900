"""The feed-ordering rules both clients share: repeats, gaps, hidden deltas, the end, the timeout."""

from __future__ import annotations

import pytest

from producers.cursor import GAP, EventCursor, ResultTimeoutError
from workers.contract import CompletionResult, DeltaEvent, DoneEvent, StartEvent, Usage, UsageEvent


def _raw(event: object) -> bytes:
    return event.model_dump_json().encode()  # type: ignore[attr-defined]


def _done(seq: int) -> DoneEvent:
    return DoneEvent(job_id="j", seq=seq, result=CompletionResult(id="j", status="succeeded"))


def test_live_events_in_order_repeats_dropped_gaps_reported() -> None:
    cursor = EventCursor("j")
    start = cursor.live(_raw(StartEvent(job_id="j", seq=0, model="openai:m")))
    assert isinstance(start, StartEvent) and cursor.next_seq == 1
    assert cursor.live(_raw(StartEvent(job_id="j", seq=0, model="openai:m"))) is None  # a repeat
    assert cursor.live(_raw(DeltaEvent(job_id="j", seq=2, text="b"))) is GAP  # seq 1 was missed
    assert cursor.next_seq == 1  # nothing skipped: the Stream is read from seq 1
    assert cursor.replayed(DeltaEvent(job_id="j", seq=1, text="a")) is not None
    assert not cursor.done
    assert isinstance(cursor.live(_raw(_done(2))), DoneEvent) and cursor.done


def test_hidden_deltas_advance_without_hiding_a_gap() -> None:
    cursor = EventCursor("j", deltas=False)
    assert cursor.live(_raw(StartEvent(job_id="j", seq=0, model="openai:m"))) is not None
    assert cursor.live(_raw(DeltaEvent(job_id="j", seq=1, text="a"))) is None and cursor.next_seq == 2
    # a delta after a missed event must not skip past it (the missed one may be a usage event)
    assert cursor.live(_raw(DeltaEvent(job_id="j", seq=4, text="d"))) is GAP and cursor.next_seq == 2
    assert cursor.replayed(DeltaEvent(job_id="j", seq=2, text="b")) is None  # hidden, but counted
    usage = cursor.replayed(UsageEvent(job_id="j", seq=3, usage=Usage()))
    assert isinstance(usage, UsageEvent) and cursor.next_seq == 4


def test_wait_is_bounded_by_the_timeout_then_raises() -> None:
    now = [100.0]
    cursor = EventCursor("job-7", timeout=2.5, idle_check_s=1.0, clock=lambda: now[0])
    assert cursor.wait_s() == 1.0
    now[0] += 2.0
    assert cursor.wait_s() == pytest.approx(0.5)
    now[0] += 0.5
    with pytest.raises(ResultTimeoutError, match=r"job-7 within 2\.5s"):
        cursor.wait_s()
    assert EventCursor("j").wait_s() == 1.0  # no timeout: the idle check interval


def test_a_consumer_starting_past_the_end_learns_the_job_ended_before_its_seq() -> None:
    cursor = EventCursor("j", from_seq=20)
    assert cursor.waiting_past_start
    assert not cursor.ended_before(None) and not cursor.ended_before(DeltaEvent(job_id="j", seq=7, text="x"))
    assert cursor.ended_before(_done(7)) and cursor.done  # the Stream's last event: the end, before seq 20
    live = EventCursor("j", from_seq=20)
    assert live.live(_raw(_done(15))) is None and live.done  # the end arriving live, below the start
    assert not EventCursor("j").waiting_past_start  # from seq 0 the replay shows the end itself
