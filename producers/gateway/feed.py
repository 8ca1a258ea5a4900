"""Job events for SSE clients: one shared pub/sub connection, one bounded queue per client.

Why not one subscription per client that blocks when its client is slow? A pub/sub connection
whose reader stops makes *Redis* buffer that connection's output (``client-output-buffer-limit
pubsub``) until it drops the connection, and a blocked reader holds a pool connection. Here:

* :class:`LiveHub` owns the gateway process's single pub/sub connection. It never blocks: it
  parses each live message once and *offers* it to the feeds of that job's channel.
* :class:`JobFeed` is one client's view of one job: a bounded ``asyncio.Queue`` that its writer
  drains. A live event is taken only if it is the next seq and there is room; otherwise the feed
  marks itself *behind* and its own task catches up from the job's replay Stream (``XRANGE``,
  one queue's worth per round trip, awaiting room in the queue in between). Nothing accumulates
  anywhere for a slow client: the events wait in the capped Redis Stream, where they are anyway.

The worker appends each event to the Stream *before* publishing it (one Lua script), so a live
event the feed dropped while behind is always found by the catch-up; the highest seq seen live
tells the feed whether another catch-up round is needed. When Redis confirms a channel's
subscription (at the start, and again after a reconnect) its feeds catch up once more, which
closes the window in which an event was published before the subscription took effect. As a
last resort an idle feed also looks in the Stream every ``idle_check_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from workers.contract import TERMINAL_EVENT_TYPES, JobKeys, StreamEvent, parse_event

__all__ = ["FeedError", "JobFeed", "LiveHub"]

log = logging.getLogger("llmq.gateway")

#: The longest wait between two checks of a feed's watch (seconds).
WATCH_MAX_S = 30.0

#: The feed's end when the job's records vanished from Redis while it was followed.
VANISHED = (
    "The job vanished from Redis while it was followed (its metadata, events and result are gone): Redis "
    "lost its data (restarted without persistence, or flushed), or the job outlived its records; no "
    "terminal event will come. Submit it again."
)

#: The hub subscribes here at start so its connection exists before the first client.
_HUB_CHANNEL = "llmq:gateway:hub"


class FeedError:
    """Put in a feed's queue when the job's events will not come: reading them failed (Redis
    unreachable), the job waits on a queue no live worker consumes (``code="no_worker"``), or its
    records vanished from Redis while it was followed (``code="job_lost"``)."""

    type = "feed_error"

    def __init__(self, message: str, *, code: str = "gateway", retry_after_s: float | None = None) -> None:
        self.message = message
        self.code = code
        self.retry_after_s = retry_after_s


#: A feed's watch: a check made some seconds after the feed began and again while nothing was read
#: (the delay doubling, at most :data:`WATCH_MAX_S`): a FeedError to end the feed with, or None.
Watch = Callable[[], Awaitable[FeedError | None]]


class LiveHub:
    def __init__(self, redis: aredis.Redis) -> None:
        self._redis = redis
        self._pubsub: aredis.client.PubSub | None = None
        self._feeds: dict[bytes, set[JobFeed]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
        await self._pubsub.subscribe(_HUB_CHANNEL)
        self._task = asyncio.create_task(self._run(), name="llmq-gateway-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()

    async def add(self, feed: JobFeed) -> None:
        subs = self._feeds.get(feed.channel)
        if subs is not None:
            subs.add(feed)
            return
        self._feeds[feed.channel] = {feed}
        assert self._pubsub is not None, "LiveHub.start() was not called"
        async with self._lock:
            await self._pubsub.subscribe(feed.channel)

    async def remove(self, feed: JobFeed) -> None:
        subs = self._feeds.get(feed.channel)
        if subs is None:
            return
        subs.discard(feed)
        if subs:
            return
        del self._feeds[feed.channel]
        if self._pubsub is not None:
            async with self._lock:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(feed.channel)

    async def _run(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("gateway pub/sub connection failed (%s); streams catch up from Redis Streams", exc)
                for waiting in list(self._feeds.values()):
                    for feed in waiting:
                        feed.wake()
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            subs = self._feeds.get(message["channel"])
            if not subs:
                continue
            if message["type"] == "subscribe":
                # From now on every event of the channel arrives live; one more look in the
                # Stream covers what was published while the SUBSCRIBE was on its way (also
                # after a reconnect, when redis-py subscribes again).
                for feed in tuple(subs):
                    feed.wake()
                continue
            if message["type"] != "message":
                continue
            try:
                event = parse_event(message["data"])
            except ValidationError:
                log.warning("dropping a malformed event on %r", message["channel"])
                continue
            for feed in tuple(subs):
                feed.offer(event)


class JobFeed:
    """One client's events of one job, in seq order, through a queue of ``maxsize`` events."""

    def __init__(
        self,
        redis: aredis.Redis,
        hub: LiveHub,
        job_id: str,
        *,
        from_seq: int = 0,
        maxsize: int = 16,
        idle_check_s: float = 5.0,
        skip_deltas: bool = False,
        on_catch_up: Callable[[], None] | None = None,
        watch: tuple[float, Watch] | None = None,
    ) -> None:
        self.keys = JobKeys(job_id)
        #: ``(after_s, check)``: when nothing came for ``after_s``, ``check`` may end the feed with an error.
        self._watch = watch
        self.channel = self.keys.channel.encode()
        self.queue: asyncio.Queue[StreamEvent | FeedError] = asyncio.Queue(maxsize)
        self._redis = redis
        self._hub = hub
        self._page = max(1, maxsize)
        self._idle_check_s = idle_check_s
        self._skip_deltas = skip_deltas
        self._on_catch_up = on_catch_up
        self._last = from_seq - 1  # newest seq taken (queued or skipped)
        self._seen = from_seq - 1  # newest seq offered live
        self._behind = True  # until the first catch-up has run
        self._overflowed = False  # a live event did not fit: counted as a catch-up
        self._wake = asyncio.Event()
        #: True once the terminal event is in the queue.
        self.finished = False
        #: The job's records were seen in Redis (a later look that finds none: the job vanished).
        self._present = False

    # --- live (called by the hub; never blocks) ---------------------------------------------------

    def offer(self, event: StreamEvent) -> None:
        seq = event.seq
        if seq <= self._last:
            return
        if seq > self._seen:
            self._seen = seq
        if self._behind or seq != self._last + 1:
            self.wake()
        elif self._skip_deltas and event.type == "delta":
            self._last = seq
        elif self.queue.full():
            self._overflowed = True
            self.wake()
        else:
            self.queue.put_nowait(event)
            self._last = seq
            if event.type in TERMINAL_EVENT_TYPES:
                self.finished = True
                self._wake.set()

    def wake(self) -> None:
        self._behind = True
        self._wake.set()

    # --- the feed's own task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe, replay from ``from_seq``, then follow live until the terminal event."""
        watching = asyncio.create_task(self._watching()) if self._watch is not None else None
        try:
            await self._hub.add(self)
            try:
                while not self.finished:
                    if self._behind:
                        await self._catch_up()
                        continue
                    before = self._last
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._idle_check_s)
                    except TimeoutError:
                        if self._last == before:
                            if await self._vanished():
                                self.finished = True
                                await self.queue.put(FeedError(VANISHED, code="job_lost"))
                                break
                            self._behind = True  # quiet: look in the Stream for anything missed
                    self._wake.clear()
            finally:
                await self._hub.remove(self)
        except (RedisError, OSError) as exc:
            log.warning("reading events of job %s failed: %s", self.keys.job_id, exc)
            await self.queue.put(FeedError(f"reading the job's events failed: {type(exc).__name__}"))
        finally:
            if watching is not None:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)

    async def _vanished(self) -> bool:
        """A quiet feed's look: True when the job, seen in Redis before, has no record there any more
        (Redis lost its data, or the job outlived its records): no terminal event can come."""
        found = int(await self._redis.exists(*self.keys.records))
        if found:
            self._present = True
            return False
        return self._present or self._last >= 0

    async def _watching(self) -> None:
        """The watch: after its delay, while no event came yet, its check may end the feed; checked
        again after twice the delay (at most :data:`WATCH_MAX_S`) while it does not (a job queued
        behind others, or one whose workers all went away since)."""
        assert self._watch is not None
        after_s, check = self._watch
        while True:
            await asyncio.sleep(after_s)
            if self._last >= 0 or self.finished:
                return  # the job started
            try:
                error = await check()
            except (RedisError, OSError):
                error = None  # a hint only: the feed itself reports a Redis that fails
            if error is not None and self._last < 0 and not self.finished:
                self.finished = True
                self.queue.put_nowait(error)  # nothing was queued yet: there is room
                self._wake.set()
                return
            after_s = min(after_s * 2, max(after_s, WATCH_MAX_S))

    async def _catch_up(self) -> None:
        """Read the Stream from the next seq; live events are ignored until it is exhausted."""
        if self._overflowed:
            self._overflowed = False
            if self._on_catch_up is not None:
                self._on_catch_up()
        while not self.finished:
            entries = await self._redis.xrange(self.keys.events, min=f"{self._last + 1}-0", count=self._page)
            if not entries:
                break
            for _, fields in entries:
                if fields is None:  # an entry deleted meanwhile
                    continue
                event = parse_event(fields[b"e"])
                if event.seq <= self._last:
                    continue
                if not (self._skip_deltas and event.type == "delta"):
                    await self.queue.put(event)  # blocks while the client is slow; nothing is read meanwhile
                self._last = event.seq
                if event.type in TERMINAL_EVENT_TYPES:
                    self.finished = True
                    return
        # Anything offered live during the round trips above is in the Stream: go again if so.
        if self._seen <= self._last:
            self._behind = False
