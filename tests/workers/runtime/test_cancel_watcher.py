"""The worker's cancel watcher: a job's abort hook is called when its cancel is published, also when
the cancel came before the hook was registered (between the job's claim and its first call)."""

from __future__ import annotations

import redis

from tests.support.waits import until
from workers.runtime.resources import CANCEL_CHANNEL, CancelWatcher


def _subscribed(r: redis.Redis) -> bool:
    counts = dict(r.pubsub_numsub(CANCEL_CHANNEL))
    return int(counts.get(CANCEL_CHANNEL.encode(), 0)) >= 1


def test_a_cancel_heard_before_the_hook_aborts_the_job_as_it_registers(redis_client: redis.Redis) -> None:
    watcher = CancelWatcher(redis_client)
    watcher.start()
    try:
        until(lambda: _subscribed(redis_client), "the watcher's subscription", 30)
        aborted: list[str] = []
        # a running job's hook: called when its cancel arrives
        watcher.register("running", lambda: aborted.append("running"))
        redis_client.publish(CANCEL_CHANNEL, "running")
        until(lambda: aborted == ["running"], "the running job's abort", 30)
        # the cancel comes first (the job was claimed and has not registered its call yet)
        redis_client.publish(CANCEL_CHANNEL, "early")
        redis_client.publish(CANCEL_CHANNEL, "running")  # a marker: published after "early", heard after it
        until(lambda: aborted == ["running", "running"], "the marker", 30)
        watcher.register("early", lambda: aborted.append("early"))
        assert aborted == ["running", "running", "early"]  # aborted as it registered
        watcher.unregister("early")
        watcher.register("early", lambda: aborted.append("early again"))  # remembered once, not forever
        assert aborted == ["running", "running", "early"]
        watcher.register("other", lambda: aborted.append("other"))  # a job never cancelled
        assert aborted == ["running", "running", "early"]
    finally:
        watcher.stop()
