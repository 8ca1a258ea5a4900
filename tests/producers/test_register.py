"""The producer's registration script on a real Redis: once per job, and safe to repeat within one submit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from producers.core import REGISTER_LUA, RESEND_AFTER_S
from workers.contract import JobKeys


@pytest.fixture
def register(redis_url: str) -> Iterator[tuple[redis.Redis, object]]:
    client = redis.Redis.from_url(redis_url)
    yield client, client.register_script(REGISTER_LUA)
    client.close()


def _args(stamp: float) -> list[object]:
    return ["tenant-a", stamp, 3600, RESEND_AFTER_S, "reg-1"]


def test_a_retried_submit_is_still_its_callers_registration_and_another_submit_is_a_duplicate(
    register: tuple[redis.Redis, object],
) -> None:
    client, script = register
    keys = [JobKeys("reg-1").meta, ""]
    assert script(keys=keys, args=_args(1000.5)) == 1  # fresh
    assert script(keys=keys, args=_args(1000.5)) == 1  # the same submit, its reply lost: still ours
    assert script(keys=keys, args=_args(1001.0)) == 0  # another submit of the same id: a duplicate
    assert script(keys=keys, args=_args(1000.5 + RESEND_AFTER_S + 1)) == 2  # never sent: send it again
    client.hset(keys[0], "sent", 1)
    assert script(keys=keys, args=_args(1000.5 + RESEND_AFTER_S + 1)) == 0  # sent: never again
    assert client.hget(keys[0], "tenant") == b"tenant-a"
    assert client.hget(keys[0], "state") == b"queued"
