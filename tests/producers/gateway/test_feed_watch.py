"""A feed's watch (what ends a chat whose job no worker will take): checked after its delay and again
while nothing was read, the delay doubling; a check that answers ends the feed with its error."""

from __future__ import annotations

import asyncio

import redis.asyncio as aredis

from producers.gateway.feed import FeedError, JobFeed, LiveHub
from workers.contract import JobKeys
from workers.contract.events import StartEvent


def test_the_watch_checks_again_while_nothing_came_and_ends_the_feed_when_it_answers(redis_url: str) -> None:
    async def scenario() -> tuple[list[str], FeedError | object]:
        client = aredis.Redis.from_url(redis_url)
        hub = LiveHub(client)
        await hub.start()
        answers: list[FeedError | None] = [None, None, FeedError("gone", code="no_worker")]
        asked: list[str] = []

        async def check() -> FeedError | None:
            asked.append("check")
            return answers[len(asked) - 1]

        feed = JobFeed(client, hub, "watched-job", watch=(0.01, check))
        runner = asyncio.create_task(feed.run())
        try:
            item = await asyncio.wait_for(feed.queue.get(), 60)
            await asyncio.wait_for(runner, 60)
        finally:
            runner.cancel()
            await hub.close()
            await client.aclose()
        return asked, item

    asked, item = asyncio.run(scenario())
    assert asked == ["check", "check", "check"]  # two checks found nothing to say, the third ended it
    assert isinstance(item, FeedError) and item.code == "no_worker"


def test_a_started_job_stops_the_watch(redis_url: str) -> None:
    async def scenario() -> int:
        client = aredis.Redis.from_url(redis_url)
        hub = LiveHub(client)
        await hub.start()
        asked = 0

        async def check() -> FeedError | None:
            nonlocal asked
            asked += 1
            start = StartEvent(job_id="started-job", seq=0, model="openai:gpt-4o-mini")
            await client.xadd(JobKeys("started-job").events, {"e": start.model_dump_json()}, id="0-1")  # as workers do
            feed.wake()
            return None

        feed = JobFeed(client, hub, "started-job", watch=(0.01, check))
        runner = asyncio.create_task(feed.run())
        try:
            first = await asyncio.wait_for(feed.queue.get(), 60)
            assert not isinstance(first, FeedError) and first.type == "start"
            await asyncio.sleep(0.1)  # several watch delays: a running watch would ask again
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await hub.close()
            await client.aclose()
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
        hub = LiveHub(client)
        await hub.start()
        feed = JobFeed(client, hub, "vanishing-job", idle_check_s=0.02)
        runner = asyncio.create_task(feed.run())
        got: list[str] = []
        try:
            first = await asyncio.wait_for(feed.queue.get(), 60)
            got.append(getattr(first, "type", "?"))
            await asyncio.sleep(0.1)  # quiet looks find the job: the feed waits on
            assert feed.queue.empty() and not runner.done()
            await client.delete(keys.meta, keys.events)  # what a restart without persistence leaves
            item = await asyncio.wait_for(feed.queue.get(), 60)
            await asyncio.wait_for(runner, 60)
        finally:
            runner.cancel()
            await hub.close()
            await client.aclose()
        return got, item

    got, item = asyncio.run(scenario())
    assert got == ["start"]
    assert isinstance(item, FeedError) and item.code == "job_lost" and "vanished from Redis" in item.message
