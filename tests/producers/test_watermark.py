"""The memory watermark's decisions (``producers/watermark.py``), on a fake clock and given readings.

When a client reads ``INFO memory`` again, when it refuses, and how a refused write is recognised
in whatever kombu or redis-py wraps it in. The same decisions against a real, filling Redis are
``tests/integration/test_redis_full.py``.
"""

from __future__ import annotations

import pytest
import redis
from kombu.exceptions import OperationalError

from producers.errors import RedisFullError, SubmitRefusedError
from producers.watermark import FRESH_S, MemoryWatermark, is_out_of_memory, queued_bytes

MB = 1_048_576


class Clock:
    def __init__(self) -> None:
        self.now = 0.0  # steps of FRESH_S land exactly (no float drift from a large start)

    def __call__(self) -> float:
        return self.now


def _info(used: int, limit: int, not_counted: int = 0) -> dict[str, int]:
    return {"used_memory": used, "maxmemory": limit, "mem_not_counted_for_evict": not_counted}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_reads_once_per_interval_while_far_below(clock: Clock) -> None:
    mark = MemoryWatermark(0.9, interval_s=1.0, clock=clock)
    assert mark.due(1000)  # never read
    mark.record(_info(10 * MB, 100 * MB))
    reads = 0
    for _ in range(100):  # 100 submits of 1 kB within the interval: no reading
        if mark.due(1000):
            reads += 1
        mark.admit(1000)
        clock.now += 0.009
    assert reads == 0 and mark.added == 100_000
    clock.now += 0.2
    assert mark.due(1000)  # the interval ended
    mark.record(_info(11 * MB, 100 * MB))
    assert mark.added == 0  # the new reading includes what was stored


def test_reads_again_at_once_when_its_own_submits_would_cross(clock: Clock) -> None:
    mark = MemoryWatermark(0.9, interval_s=1.0, clock=clock)
    mark.record(_info(80 * MB, 100 * MB))
    clock.now += FRESH_S
    big = 3 * MB
    mark.admit(big)
    mark.admit(big)
    mark.admit(big)  # 89 MB estimated
    assert not mark.due(100)
    assert mark.due(big)  # the next would cross: read before deciding
    mark.record(_info(82 * MB, 100 * MB))  # others freed some meanwhile
    mark.admit(big)  # admitted on the fresh figure


def test_refuses_above_the_watermark_and_names_the_figures(clock: Clock) -> None:
    mark = MemoryWatermark(0.9, setting="LLMQ_BROKER_URL", clock=clock, retry_after_s=7)
    mark.record(_info(95 * MB, 100 * MB, not_counted=2 * MB))
    with pytest.raises(RedisFullError) as caught:
        mark.admit(10)
    err = caught.value
    assert isinstance(err, SubmitRefusedError) and err.http_status == 503 and err.code == "redis_full"
    assert (err.used_bytes, err.max_bytes, err.retry_after_s, err.setting) == (93 * MB, 100 * MB, 7, "LLMQ_BROKER_URL")
    text = str(err)
    assert "\n" not in text
    for part in ("LLMQ_BROKER_URL", "93.0 MB used of 100.0 MB maxmemory (93%)", "90%", "LLMQ_REDIS_HIGH_WATERMARK"):
        assert part in text, text
    assert "Retry in 7s" in text and "maxmemory" in text
    assert mark.added == 0  # a refused submit stores nothing


def test_a_burst_of_refusals_reads_once_per_fresh_window(clock: Clock) -> None:
    mark = MemoryWatermark(0.9, clock=clock)
    mark.record(_info(95 * MB, 100 * MB))
    reads = 0
    step = FRESH_S / 5 * 1.001  # five refused submits per fresh window (a margin against float drift)
    for i in range(50):
        clock.now = i * step
        if mark.due(10):
            reads += 1
            mark.record(_info(95 * MB, 100 * MB))
        with pytest.raises(RedisFullError):
            mark.admit(10)
    assert reads == 50 // 5 - 1  # once per fresh window, not once per submit


def test_no_maxmemory_and_a_zero_watermark_never_refuse(clock: Clock) -> None:
    unlimited = MemoryWatermark(0.9, clock=clock)
    unlimited.record(_info(900 * MB, 0))
    unlimited.admit(100 * MB)
    assert not unlimited.sized  # no maxmemory: the client does not even size its jobs
    off = MemoryWatermark(0.0, clock=clock)
    assert not off.due(0) and not off.sized
    off.admit(10**12)


def test_a_reading_in_progress_is_not_repeated(clock: Clock) -> None:
    mark = MemoryWatermark(0.9, clock=clock)
    mark.begin()
    assert not mark.due(0)  # another caller decides on the last reading meanwhile
    mark.end()
    assert mark.due(0)


def test_a_redis_that_refuses_info_turns_the_check_off(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    mark = MemoryWatermark(0.9, clock=clock)
    mark.failed(redis.ConnectionError("down"))  # Redis away: the registration rides it out
    assert mark.enabled
    mark.failed(redis.exceptions.NoPermissionError("NOPERM this user has no permissions to run 'info'"))
    assert not mark.enabled and not mark.due(0)
    assert "refused INFO memory" in caplog.text


def test_without_a_reading_the_error_says_so(clock: Clock) -> None:
    err = MemoryWatermark(0.9, clock=clock).full_error(refused_by="registering the job")
    assert "usage unknown" in str(err) and "refused a write (registering the job)" in str(err)
    assert err.used_bytes is None and err.max_bytes is None


def test_out_of_memory_is_found_in_any_wrapper() -> None:
    oom = redis.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert is_out_of_memory(oom)
    try:  # kombu's publish path: raise ConnectionError(str(exc)) from exc
        raise OperationalError(str(oom)) from oom
    except OperationalError as wrapped:
        assert is_out_of_memory(wrapped)
    assert is_out_of_memory(OperationalError("OOM command not allowed when used memory > 'maxmemory'."))
    assert is_out_of_memory(redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."))
    assert not is_out_of_memory(OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    assert not is_out_of_memory(redis.ResponseError("WRONGTYPE Operation against a key"))


def test_queued_bytes_grows_with_the_job() -> None:
    assert queued_bytes(0) > 1000
    assert queued_bytes(100_000) > 1.3 * 100_000  # kombu's base64 body alone is 4/3
