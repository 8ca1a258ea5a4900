"""A feed's watch (what ends a chat whose job no worker will take): checked after its delay and again
while nothing was read, the delay doubling; a check that answers ends the feed with its error. And a
quiet feed's look whether its job is still in Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis

from producers.gateway.feed import FeedError, JobFeed, LiveHub
from workers.contract import JobKeys
from workers.contract.events import StartEvent


@contextlib.asynccontextmanager
async def _running_feed(
    client: aredis.Redis, job_id: str, **options: Any
) -> AsyncIterator[tuple[JobFeed, asyncio.Task[None]]]:
    """A feed of ``job_id`` running on its own hub; stopped, with its hub and ``client``, on the way out."""
    hub = LiveHub(client)
    await hub.start()
    feed = JobFeed(client, hub, job_id, **options)
    runner = asyncio.create_task(feed.run())
    try:
        yield feed, runner
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await hub.close()
        await client.aclose()


def test_the_watch_checks_again_while_nothing_came_and_ends_the_feed_when_it_answers(redis_url: str) -> None:
    async def scenario() -> tuple[list[str], FeedError | object]:
        answers: list[FeedError | None] = [None, None, FeedError("gone", code="no_worker")]
        asked: list[str] = []

        async def check() -> FeedError | None:
            asked.append("check")
            return answers[len(asked) - 1]

        async with _running_feed(aredis.Redis.from_url(redis_url), "watched-job", watch=(0.01, check)) as (
            feed,
            runner,
        ):
            item = await asyncio.wait_for(feed.queue.get(), 60)
            await asyncio.wait_for(runner, 60)
        return asked, item

    asked, item = asyncio.run(scenario())
    assert asked == ["check", "check", "check"]  # two checks found nothing to say, the third ended it
    assert isinstance(item, FeedError) and item.code == "no_worker"


def test_a_started_job_stops_the_watch(redis_url: str) -> None:
    async def scenario() -> int:
        client = aredis.Redis.from_url(redis_url)
        feeds: list[JobFeed] = []
        asked = 0

        async def check() -> FeedError | None:
            nonlocal asked
            asked += 1
            start = StartEvent(job_id="started-job", seq=0, model="openai:gpt-4o-mini")
            await client.xadd(JobKeys("started-job").events, {"e": start.model_dump_json()}, id="0-1")  # as workers do
            feeds[0].wake()
            return None

        async with _running_feed(client, "started-job", watch=(0.01, check)) as (feed, _):
            feeds.append(feed)
            first = await asyncio.wait_for(feed.queue.get(), 60)
            assert not isinstance(first, FeedError) and first.type == "start"
            await asyncio.sleep(0.1)  # several watch delays: a running watch would ask again
        return asked

    assert asyncio.run(scenario()) == 1


def test_a_followed_job_whose_records_vanish_ends_its_feed_with_job_lost(redis_url: str) -> None:
    """A quiet feed looks whether the job is still in Redis: one seen before and gone now (a Redis
    restarted without persistence, or flushed) ends the feed with ``job_lost``; until then it waits."""

    async def scenario() -> tuple[list[str], FeedError | object]:
        client = aredis.Redis.from_url(redis_url)
        keys = JobKeys("vanishing-job")
        await client.hset(keys.meta, mapping={"state": "running", "tenant": "t"})
        start = StartEvent(job_id="vanishing-job", seq=0, model="openai:gpt-4o-mini")
        await client.xadd(keys.events, {"e": start.model_dump_json()}, id="0-1")
        got: list[str] = []
        async with _running_feed(client, "vanishing-job", idle_check_s=0.02) as (feed, runner):
            first = await asyncio.wait_for(feed.queue.get(), 60)
            got.append(getattr(first, "type", "?"))
            await asyncio.sleep(0.1)  # quiet looks find the job: the feed waits on
            assert feed.queue.empty() and not runner.done()
            await client.delete(keys.meta, keys.events)  # what a restart without persistence leaves
            item = await asyncio.wait_for(feed.queue.get(), 60)
            await asyncio.wait_for(runner, 60)
        return got, item

    got, item = asyncio.run(scenario())
    assert got == ["start"]
    assert isinstance(item, FeedError) and item.code == "job_lost" and "vanished from Redis" in item.message
