"""The Celery broker transport: kombu's Redis transport whose queue is a schedule, with an atomic
fetch that decides who runs next, proof of life for held messages, and without a client object
per operation. Needs Redis >= 6.2.

* A fetch is one Lua script (``workers/connections/lua/fetch.lua``) that picks the class and tenant
  whose turn it is, pops up to N messages and records them as held in ``unacked`` in the same step:
  a message is always queued or held, never neither.
* A consumer waits on its queues' bells (``BLPOP``) with the fetch script sent behind the wait in
  the same write: Redis runs the fetch the moment the wait ends, and a job arriving at an idle
  consumer costs one round trip. When its last fetch left work queued, its next wait with room (a
  freed slot) is the fetch itself: one round trip per refill.
* A thread per channel re-scores the entries of the messages it holds (the heartbeat), so a live
  worker's jobs never age out and a dead worker's move after ``visibility_timeout``.
* The channel builds its Redis client once instead of one per ack.

The design, what a crash can lose, and why each choice: ``docs/broker-transport.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from queue import Empty
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.eventio import READ
from kombu.utils.json import dumps, loads
from kombu.utils.scheduling import round_robin_cycle

from workers.connections.oom import refused_for_memory
from workers.connections.redisclient import sync_parser_options
from workers.connections.schedtransport import SchedulingChannel
from workers.connections.schedule import CLAIM, FETCH, RELEASE, attributes_of, bell_key, queue_prefix

__all__ = [
    "MALFORMED_KEY",
    "SET_ASIDE_LUA",
    "Channel",
    "Fetched",
    "Poller",
    "QoS",
    "SentinelChannel",
    "SentinelTransport",
    "Transport",
    "install_transport",
    "leave_for_restore",
    "transport_for",
]

log = logging.getLogger("llmq.broker")

_SCHEMES = {"redis", "rediss", "unix", "redis+socket"}

#: Where the fetch moves a queued payload it cannot read (not JSON, no delivery tag or exchange).
MALFORMED_KEY = "llmq.broker.malformed"
#: A key nothing writes: what a channel that stopped taking waits on (its wait's timeout paces it).
IDLE_KEY = "llmq.broker.idle"

#: Move one given payload (ARGV[1]) that no one can read from list KEYS[1] to KEYS[2].
SET_ASIDE_LUA = """
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


class Fetched(NamedTuple):
    """A message the fetch took: its queue, its payload as queued, its delivery tag."""

    queue: str
    payload: bytes
    tag: str


class QoS(kombu_redis.QoS):
    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        channel = self.channel
        if delivery_tag in channel._fetched:
            # the fetch script already stored it in unacked + unacked_index: only remember it here,
            # held first and then no longer "fetched", so the heartbeat sees it at every instant
            virtual.QoS.append(self, message, delivery_tag)
            channel._fetched.discard(delivery_tag)
            # kombu keeps the payload as queued beside the decoded body (its body base64-encoded: 1.33x
            # the body, held as long as the job runs) only to store it in unacked, done by the fetch;
            # a restore reads that entry (or re-encodes the body: ``Message.serializable``)
            message._raw = None
        else:  # not fetched by the script (kombu's own paths): kombu's bookkeeping
            super().append(message, delivery_tag)
        channel.start_heartbeat()

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        """kombu's restore of aged messages, which waits while Redis refuses writes (full at
        ``maxmemory``: its mutex is a write) instead of stopping the worker (at start) or logging a
        traceback every interval: the messages stay in ``unacked`` and are restored once Redis takes
        writes again."""
        try:
            return super().restore_visible(start, num, interval)
        except redis.ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            log.warning("broker: Redis refuses writes (full at maxmemory); aged messages are restored later")
            return None

    def held_tags(self) -> list[str]:
        """The delivery tags this channel holds now (copied: the consumer mutates the dict); kombu
        keeps acked tags in ``_delivered`` until its next append, marked in ``_dirty``."""
        acked = _copy(self._dirty or ())
        held = _copy(self._delivered or ())
        return [tag for tag in held if tag not in acked] if acked else held

    def ack(self, delivery_tag: str) -> None:
        channel = self.channel
        if _LEFT and self._delivered is not None and _take_left(self._delivered.get(delivery_tag)):
            # left for restore (a job Redis was too full to start): forgotten here, its unacked entry
            # stays, no heartbeat re-scores it, and a restore returns it to its queue once it is
            # older than visibility_timeout and Redis takes writes again; no write needed now
            virtual.QoS.ack(self, delivery_tag)
            return
        if not channel.ack_flush_ms:
            channel.release([delivery_tag])
        else:  # the credit comes back now; the bookkeeping entries leave Redis with the next flush of acks
            channel.defer_ack(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        channel.credit_back()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:  # kombu's restore (the channel's _do_restore_message releases the slot)
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self.channel.release([delivery_tag])
        virtual.QoS.ack(self, delivery_tag)
        self.channel.credit_back()


#: Task ids whose message the next ack leaves for restore instead of removing (:func:`leave_for_restore`).
_LEFT: set[str] = set()
_LEFT_LOCK = threading.Lock()


def leave_for_restore(task_id: str) -> None:
    """Make the coming ack of task ``task_id``'s message leave it held by no one in ``unacked``, to be
    restored to its queue by kombu's restore of aged entries, instead of removing it. For a job that
    must go back to the queue while Redis refuses writes (at ``maxmemory``): a re-queue, a reject or
    a retry is a write Redis refuses, this is none (``workers/jobs/fullwait.py``)."""
    with _LEFT_LOCK:
        _LEFT.add(task_id)


def _take_left(message: Any) -> bool:
    if message is None or not _LEFT:
        return False
    task_id = (getattr(message, "headers", None) or {}).get("id")
    with _LEFT_LOCK:
        if task_id in _LEFT:
            _LEFT.discard(task_id)
            return True
    return False


def _copy(tags: Iterable[str]) -> list[str]:
    """A copy of a dict's keys or a set the consumer mutates meanwhile (from the heartbeat thread)."""
    for _ in range(10):
        try:
            return list(tags)
        except RuntimeError:  # changed size during the copy
            continue
    return []


class Channel(SchedulingChannel):
    QoS = QoS
    _shared_client: Any = None
    #: The wait's commands in flight, in the order of their replies: ``BLPOP`` on the bells followed
    #: by the fetch script (``EVALSHA``) in the same write, ``BLPOP`` alone (no room, or a leaving
    #: channel), or the fetch alone (when the last fetch left work queued: see :meth:`_brpop_start`).
    _wait_commands: tuple[str, ...] = ("BLPOP",)
    #: The last fetch took messages and left work queued: the next wait with room is a fetch.
    _more = False
    #: The wait's reply is read with the window full (:meth:`read_with_window_full`): what its fetch
    #: took goes back to the queue.
    _window_full = False
    #: The tag ``_get`` fetched for ``basic_get`` (forgotten once ``basic_get`` returns).
    _got: str | None = None
    # kombu's, which its stubs omit (annotations only: nothing is shadowed)
    _queue_cycle: Any
    _closing: bool
    connection_errors: tuple[type[BaseException], ...]
    _q_for_pri: Callable[[str, int], str]
    _flush_brpop_reauth: Callable[[], None]
    _maybe_update_queues_expire: Callable[[Any, str], None]
    #: Seconds between re-scores of the held messages; None = a fifth of the visibility timeout.
    heartbeat_interval: float | None = None
    #: Most messages one fetch takes (never more than the prefetch credit); 1 = one per fetch.
    fetch_batch: int = 32
    #: Acks leave Redis in batches, at most this many milliseconds after the first of a batch;
    #: 0 = each ack in a round trip of its own, as kombu does (see :meth:`defer_ack`).
    ack_flush_ms: float = 0
    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "heartbeat_interval",
        "fetch_batch",
        "ack_flush_ms",
    )
    _beat_thread: threading.Thread | None = None
    _beat_stop: threading.Event | None = None
    #: False once the worker stops taking jobs (:meth:`stop_taking`): waits end without a fetch.
    taking = True
    _beat_lock = threading.Lock()

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        if connection.client.transport_options.get("global_keyprefix"):
            raise ValueError("llmqueue's broker transport does not support kombu's global_keyprefix")
        #: Delivery tags the fetch script recorded and ``QoS.append`` has not taken yet (the
        #: heartbeat re-scores them too: a batch's later messages wait while earlier ones deliver).
        self._fetched: set[str] = set()
        self._scripts: dict[str, Any] = {}
        #: Acked tags whose ``unacked`` and ``unacked_index`` entries are still to be removed.
        self._acked: list[str] = []
        self._ack_lock = threading.Lock()
        self._ack_wake = threading.Event()
        self._ack_thread: threading.Thread | None = None
        super().__init__(connection, **kwargs)
        # the wait's timeout: how often an idle consumer sweeps for work no one rang for (a token lost
        # with a closing channel); kombu's brpop_timeout, 1 s. Transport option ``sweep_s`` (tests)
        sweep = connection.client.transport_options.get("sweep_s")
        if sweep:
            self.brpop_timeout = sweep

    def clock(self) -> float:
        """The score of a fetched message's ``unacked_index`` entry (kombu's restore compares it
        with this process's ``time()``); a seam for tests."""
        return time.time()

    @property
    def atomic_fetch(self) -> bool:
        """Fetch with the script: only with kombu's ack emulation (else nothing would ever ack it)."""
        return bool(self.ack_emulation)

    def fetched_tags(self) -> list[str]:
        """Tags fetched and not yet delivered (copied: the consumer mutates the set)."""
        return _copy(self._fetched)

    def fetch_limit(self) -> int:
        """How many messages the next fetch may take: the prefetch credit (kombu's estimate: None
        when the channel has no prefetch limit), at most ``fetch_batch``."""
        batch = max(1, int(self.fetch_batch or 1))
        credit = self.qos.can_consume_max_estimate()
        return batch if credit is None else max(0, min(batch, int(credit)))

    def maybe_refresh_binding_expiry(self) -> None:
        """kombu's refresh of expiring queues' bindings (Celery's pidbox, every poll cycle), which
        while Redis refuses writes (full at ``maxmemory``) says so in one quiet line and tries again
        at the next cycle, instead of kombu's warning with a full traceback every second."""
        try:
            super().maybe_refresh_binding_expiry()  # type: ignore[misc]  # kombu 5.5, not in its stubs
        except redis.ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            log.debug("broker: Redis refuses writes (full at maxmemory); bindings refreshed later")

    def _script(self, source: str) -> Any:
        scripts = self._scripts
        script = scripts.get(source)
        if script is None:  # registered once per channel client; redis-py reloads it on NOSCRIPT
            script = scripts[source] = self._create_client().register_script(source)
        return script

    def fetch_many(self, queues: Sequence[str], limit: int) -> tuple[list[Fetched], tuple[str, bytes] | None]:
        """Decide who runs next and take up to ``limit`` messages of ``queues`` (each queue's schedule,
        in the cycle's order) into the unacked bookkeeping, in one script (the scheduler's fetch,
        ``workers/connections/lua/fetch.lua``). Returns the taken messages in delivery order, and the
        (list key, payload) the batch stopped at because Lua cannot read it (taken, or set aside, by
        :meth:`take_unreadable`), or None."""
        if not queues or limit < 1:
            return [], None
        keys, args = self._fetch_call(queues, limit)
        reply = self.sched_script(FETCH)(keys=keys, args=args, client=self._create_client())
        return self._took(reply)

    def _fetch_call(self, queues: Sequence[str], limit: int) -> tuple[list[str], list[Any]]:
        """The fetch script's keys and arguments (:meth:`fetch_many`)."""
        keys = [key for queue in queues for key in (queue, queue_prefix(queue))]
        rotates = type(self._queue_cycle).rotate is round_robin_cycle.rotate
        args = [repr(self.clock()), limit, len(queues), int(rotates)]
        return [self.unacked_key, self.unacked_index_key, *keys], args

    def _took(self, reply: Any) -> tuple[list[Fetched], tuple[str, bytes] | None]:
        """Read the fetch script's reply: what it took (now fetched here), the unreadable payload it
        stopped at, and whether it left work queued (:attr:`_more`)."""
        rows = list(reply or ())
        more = bool(rows.pop()) if rows and not isinstance(rows[-1], list | tuple) else False
        taken: list[Fetched] = []
        unreadable: tuple[str, bytes] | None = None
        for row in rows:
            key = bytes_to_str(row[0])
            if len(row) < 3:
                unreadable = (key, row[1])
            else:
                taken.append(Fetched(key, row[1], bytes_to_str(row[2])))
        # a fetch that took nothing waits on the bells next, whatever it saw (no fetch after fetch)
        self._more = more and bool(taken)
        self._fetched.update(fetched.tag for fetched in taken)
        for fetched in taken:
            self.on_fetched(fetched.tag)
        return taken, unreadable

    def take_unreadable(self, key: str, payload: bytes, queues: Sequence[str] = ()) -> Fetched | None:
        """Read a payload Lua could not in Python, then take exactly that payload from list ``key`` of
        a queue's schedule (the scheduler's claim script); one nobody can read is moved to
        :data:`MALFORMED_KEY`. None when set aside or taken by another consumer first."""
        try:
            message = loads(bytes_to_str(payload))
            props = message["properties"]
            tag, info = props["delivery_tag"], props["delivery_info"]
            entry = f"[{bytes_to_str(payload)}, {dumps(info['exchange'])}, {dumps(info['routing_key'])}]"
            if not isinstance(tag, str):
                raise TypeError("delivery_tag is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            if self._script(SET_ASIDE_LUA)(keys=[key, MALFORMED_KEY], args=[payload]):
                log.error(
                    "broker: a message on %r is not a readable kombu payload (%s); moved to %s: %.200r",
                    key,
                    exc,
                    MALFORMED_KEY,
                    payload,
                )
            return None
        queue = next((q for q in (*queues, *self._queue_cycle.items) if key.startswith(queue_prefix(q))), None)
        if queue is None:
            return None  # not a list of this consumer's queues
        found = attributes_of(message)
        args = [key, payload, tag, entry, repr(self.clock()), queue_prefix(queue)]
        args += [found.priority, found.tenant, found.key or ""]
        if not self.sched_script(CLAIM)(keys=[self.unacked_key, self.unacked_index_key], args=args):
            return None  # another consumer took it first
        self._fetched.add(tag)
        self.on_fetched(tag)
        return Fetched(queue, payload, tag)

    def fetch(self, queues: Sequence[str]) -> tuple[str, bytes] | None:
        """Take the first message of ``queues`` into the unacked bookkeeping; returns (queue,
        payload), or None when all are empty (or the first could not be read: set aside)."""
        fetched = self._fetch_one(queues)
        return None if fetched is None else (fetched.queue, fetched.payload)

    def _fetch_one(self, queues: Sequence[str]) -> Fetched | None:
        taken, unreadable = self.fetch_many(queues, 1)
        if taken:
            return taken[0]
        return None if unreadable is None else self.take_unreadable(*unreadable, queues)

    def stop_taking(self) -> None:
        """Take no more messages (the worker is shutting down): a wait that ends from now on delivers
        nothing, so what the worker hands back to the queue stays there for another worker instead of
        being fetched again by this one before its consumer is cancelled: what the fetch sent behind
        a wait in flight took goes back to its queue at once (which rings the bell), and a wake-up taken
        without a fetch is handed on to the next consumer; later waits send no fetch and do not take
        the queues' tokens at all. Safe from any thread or greenlet (a flag the consumer's loop reads)."""
        self.taking = False

    def credit_back(self) -> None:
        """A message's credit came back (acked or rejected): a consumer waiting with a full window looks again now."""
        cycle = getattr(self.connection, "cycle", None)
        if isinstance(cycle, Poller):
            cycle.credit_back()

    def on_fetched(self, delivery_tag: str) -> None:
        """Called for each message right after the fetch script took it (for a batch: for all of
        them, before the first is delivered): a seam for tests (a subclass kills the process or
        Redis here to prove the window is closed)."""

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self.atomic_fetch:
            super()._brpop_start(timeout)  # type: ignore[misc]  # private kombu method the stubs omit
            return None
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        limit = self.fetch_limit() if self.taking and not self._closing else 0
        commands: list[list[Any]] = []
        if not (limit and self._more):
            # wakes when a queue's bell holds its token (taking it): there may be work to take. A leaving
            # channel waits on a key nothing writes: the tokens are for the consumers that take
            bells = [bell_key(queue) for queue in queues] if self.taking else [IDLE_KEY]
            commands.append(["BLPOP", *bells, timeout or 0])
        if limit:
            # the fetch, in the same write: Redis runs it as soon as the wait ends (a token taken, or
            # the timeout: the sweep), so a job that wakes an idle consumer is taken in that one round
            # trip, not in a second one after the wake-up's reply. When the last fetch left work
            # queued and there is room again (a freed slot), the fetch alone is the wait. Its limit is
            # the credit now; a wait only sees credit come back (acks), never go. Its entries are
            # scored with the clock of the send, at most the wait's timeout (1 s) before the wake-up
            keys, fetch_args = self._fetch_call(queues, limit)
            commands.append(["EVALSHA", self.sched_script(FETCH).sha, len(keys), *keys, *fetch_args])
        self._wait_commands = tuple(str(command[0]) for command in commands)
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        # one write, one system call: the commands packed into one buffer
        connection.send_packed_command([b"".join(connection.pack_commands(commands))])
        return None

    def _brpop_read(self, **options: Any) -> bool:
        if not self.atomic_fetch:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]  # private kombu method the stubs omit
        try:
            connection = self.client.connection
            replies = self._read_replies(connection, **options)
            woke, reply = replies.get("BLPOP"), replies.get("EVALSHA")
            # Redis restarted or flushed its scripts: fetched as below (redis-py loads the script)
            fetched = "EVALSHA" in replies and not isinstance(reply, redis.exceptions.NoScriptError)
            if fetched and isinstance(reply, Exception):  # as the fetch below would raise it
                raise reply
            if isinstance(woke, Exception) and not fetched:  # (after a fetch that ran: what it took counts)
                raise woke
            if fetched:  # the fetch ran after the wait, or was the wait: what it took is held here now
                taken, unreadable = self._took(reply)
                if self._closing or not self.taking or self._window_full:  # no room for it here: back now
                    self._give_back([fetched_.tag for fetched_ in taken])
                    raise Empty()
            else:
                limit = 0 if self._window_full else self.fetch_limit()
                if self._closing or not self.taking or not limit:  # takes nothing: nothing to hand over
                    if woke:  # the token it took is another consumer's wake-up (a job just handed back)
                        self._ring(bytes_to_str(woke[0]))
                    raise Empty()
                # a message arrived, the wait timed out (unwatched lists are swept), or Redis is full
                taken, unreadable = self.fetch_many(self._queue_cycle.consume(len(self.active_queues)), limit)
            if taken:
                self.start_heartbeat()
                self._deliver_all(taken)
            if unreadable is not None:  # the batch stopped there: taken now, as a fetch of one would
                claimed = self.take_unreadable(*unreadable)
                if claimed is not None:
                    self._deliver_all([claimed])
                    return True
            if not taken:
                raise Empty()
            return True
        finally:
            self._fetched.clear()  # appended by now, or never (the entry then ages out: restored)
            self._in_poll = None
            self._flush_brpop_reauth()

    def fetch_in_flight(self) -> bool:
        """The wait in flight carries a fetch (its reply may hold messages it took)."""
        return bool(self._in_poll) and "EVALSHA" in self._wait_commands

    def read_with_window_full(self) -> None:
        """Read the wait's reply now that the prefetch window is full, giving what its fetch took back
        to the queue (:class:`Poller`). The fetch took no more than the credit when it was sent; the
        window shrank meanwhile (Celery lowers its prefetch count once an ETA task it held starts).
        Raises ``Empty``, as a read that delivered nothing does."""
        self._window_full = True
        try:
            self._brpop_read()
        finally:
            self._window_full = False

    def _read_replies(self, connection: Any, **options: Any) -> dict[str, Any]:
        """Read the reply of each command of the wait in flight (:meth:`_brpop_start`), by command
        name; an error reply is its exception, read in its turn, so the connection stays in step. A
        lost connection is closed (the next poll reconnects) and raised."""
        replies: dict[str, Any] = {}
        for command in self._wait_commands:
            try:
                replies[command] = self.client.parse_response(connection, command, **options)
            except self.connection_errors:
                connection.disconnect()
                raise
            except redis.exceptions.ResponseError as exc:
                replies[command] = exc
        return replies

    def _ring(self, bell: str) -> None:
        """Put back a bell's token this channel took and will not act on, so the next consumer with
        room wakes now rather than at its timed sweep (a refusal, Redis full or gone, leaves it to the sweep)."""
        try:
            self._create_client().lpush(bell, "1")
        except redis.RedisError as exc:
            log.warning("broker: could not ring %s again (%s); the next timed sweep takes its work", bell, exc)

    def _deliver_all(self, taken: Sequence[Fetched]) -> None:
        """Deliver fetched messages in order (each rotates the cycle, as kombu's one-message read
        does). If a delivery raises, its message is left as before batches (see the module doc) and
        the ones after it, never handed to anyone, go back to their queues now."""
        for i, fetched in enumerate(taken):
            try:
                self._queue_cycle.rotate(fetched.queue)
                self.connection._deliver(loads(bytes_to_str(fetched.payload)), fetched.queue)
            except Exception:
                self._give_back([later.tag for later in taken[i + 1 :]])
                raise

    def _give_back(self, tags: Sequence[str]) -> None:
        """Restore fetched, never delivered messages to their queues (kombu's ``restore_by_tag``,
        the last first: the first ends at the tail, taken next). After a failure (Redis gone: one
        timeout is enough) the rest are left recorded, unheartbeated: restored once they age past
        ``visibility_timeout``."""
        qos = self.qos
        assert isinstance(qos, QoS)
        self._fetched.difference_update(tags)
        for i, tag in enumerate(reversed(tags)):
            try:
                qos.restore_by_tag(tag)
            except Exception as exc:
                log.warning(
                    "broker: could not give back %d fetched messages (%s); restored once they age", len(tags) - i, exc
                )
                return

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        if not self.atomic_fetch:
            return super()._get(queue)
        fetched = self._fetch_one([queue])
        with self.conn_or_acquire() as client:
            self._maybe_update_queues_expire(client, queue)
        if fetched is None:
            raise Empty()
        self._got = fetched.tag
        return loads(bytes_to_str(fetched.payload))

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        if no_ack and self.atomic_fetch:  # taken and released at once: nothing would ever ack it
            fetched = self._fetch_one([queue])
            if fetched is None:
                return None
            self._fetched.discard(fetched.tag)
            self.release([fetched.tag])
            return self.Message(loads(bytes_to_str(fetched.payload)), channel=self)
        try:
            return super().basic_get(queue, no_ack=no_ack, **kwargs)
        finally:
            if self._got is not None:  # held by now, or never (the entry then ages out: restored)
                self._fetched.discard(self._got)
                self._got = None

    @property
    def beat_interval(self) -> float:
        if self.heartbeat_interval:
            return float(self.heartbeat_interval)
        return max(0.2, float(self.visibility_timeout) / 5)

    def start_heartbeat(self) -> None:
        if self._beat_thread is not None:
            return
        with self._beat_lock:
            if self._beat_thread is None:
                self._beat_stop = threading.Event()
                thread = threading.Thread(target=self._beat_loop, name="llmq-unacked-heartbeat", daemon=True)
                thread.start()
                self._beat_thread = thread

    def refresh_unacked(self, now: float | None = None) -> int:
        """Re-score the ``unacked_index`` entry of every message held or fetched (not yet
        delivered) to ``now``; returns how many there were."""
        qos = self.qos
        # fetched first: QoS.append holds a tag before it stops being fetched (never in neither)
        fetched = self.fetched_tags()
        tags = list(dict.fromkeys([*fetched, *(qos.held_tags() if isinstance(qos, QoS) else ())]))
        if not tags:
            return 0
        stamp = time.time() if now is None else now
        self._create_client().zadd(self.unacked_index_key, dict.fromkeys(tags, stamp), xx=True)
        return len(tags)

    def _beat_loop(self) -> None:
        stop = self._beat_stop
        assert stop is not None
        while not stop.wait(self.beat_interval):
            if self.closed:
                return
            try:
                self.refresh_unacked()
            except redis.RedisError as exc:
                log.warning("broker heartbeat: Redis unavailable (%s); retrying", exc)
            except Exception:  # never let the heartbeat die silently
                log.exception("broker heartbeat failed; retrying")

    def release(self, tags: Sequence[str]) -> int:
        """Remove acked (or dropped) messages' bookkeeping and free the slots they held, in one
        script (``workers/connections/lua/release.lua``); returns how many."""
        if not tags:
            return 0
        keys = [self.unacked_key, self.unacked_index_key]
        self.sched_script(RELEASE)(keys=keys, args=list(tags), client=self._create_client())
        return len(tags)

    def defer_ack(self, delivery_tag: str) -> None:
        """Queue an acked message's bookkeeping removal for the next flush (``ack_flush_ms``).

        kombu removes each acked message's ``unacked`` and ``unacked_index`` entries in a
        ``MULTI`` of its own: 3.5-5.5 % of a streaming job's worker CPU (py-spy, gevent, 200 slots).
        Here the ack gives its prefetch credit back at once (the next message is fetched as
        before) and a flusher removes the entries of every message acked meanwhile in one
        ``MULTI`` (the same ``ZREM`` and ``HDEL``, many tags each), at most ``ack_flush_ms`` later.
        In between the entry is held by no one, so no heartbeat re-scores it: a worker killed
        there leaves it to age out, and the restore re-queues a job that has already ended; its
        next run finds the stored result (kept by job id) and stops without calling or charging
        anything, as after an ack lost with Redis (docs/broker-transport.md). ``close`` flushes what is
        left; a flush Redis refuses keeps its tags for the next one."""
        with self._ack_lock:
            self._acked.append(delivery_tag)
            first = len(self._acked) == 1
            if self._ack_thread is None:
                thread = threading.Thread(target=self._ack_loop, name="llmq-ack-flusher", daemon=True)
                self._ack_thread = thread
                thread.start()
        if first:
            self._ack_wake.set()

    def pending_acks(self) -> list[str]:
        """Acked tags whose entries the next flush removes (a copy)."""
        with self._ack_lock:
            return list(self._acked)

    def flush_acks(self) -> int:
        """Remove the entries of the messages acked so far, in one round trip; returns how many."""
        with self._ack_lock:
            tags, self._acked = self._acked, []
        if not tags:
            return 0
        try:
            self.release(tags)
        except BaseException:
            with self._ack_lock:  # kept, in order, ahead of those acked meanwhile
                self._acked[:0] = tags
            raise
        return len(tags)

    def _ack_loop(self) -> None:
        wake = self._ack_wake
        while True:
            wake.wait()
            if self.closed:
                return
            time.sleep(self.ack_flush_ms / 1000)  # the batch fills meanwhile
            wake.clear()
            try:
                self.flush_acks()
            except redis.RedisError as exc:
                log.warning("broker acks: Redis unavailable (%s); retrying", exc)
                time.sleep(1.0)
                wake.set()
            except Exception:  # never let the flusher die silently
                log.exception("broker acks: flush failed; retrying")
                time.sleep(1.0)
                wake.set()

    def close(self) -> None:
        if self._beat_stop is not None:
            self._beat_stop.set()
        if self.pending_acks():
            try:
                self.flush_acks()
            except Exception as exc:  # left to age out and be restored (defer_ack)
                log.warning("broker acks: %d not written at close (%s)", len(self.pending_acks()), exc)
        super().close()
        self._ack_wake.set()  # the flusher sees the channel closed and ends

    def _connparams(self, asynchronous: bool = False) -> Any:
        params = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]  # private kombu method the stubs omit
        if not asynchronous:  # acks, fetch scripts, heartbeat: the quick check of a lent connection
            params.update(sync_parser_options())
        return params

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]  # private kombu method the stubs omit
        client = self._shared_client
        if client is None:
            client = self._shared_client = super()._create_client()  # type: ignore[misc]  # private kombu method the stubs omit
        return client


#: Longest a consumer whose prefetch window is full waits before it looks at its credit again.
REFILL_POLL_S = 0.05


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, re-checking a full prefetch window every :data:`REFILL_POLL_S` seconds.

    A consumer whose window is full (every slot busy) stops waiting on the queue; kombu's poller
    then waits up to the caller's whole timeout (Celery's gevent/eventlet loop, ``synloop``, passes
    2 s) on its other sockets before it looks at the credit again, so a slot freed by an ack stayed
    empty for up to 2 s (``notes/celery-at-scale.md``: 47 vs 75 jobs/s at 100 slots). That stall
    is why gevent workers prefetched twice their slots, and prefetching past the slots holds jobs a
    busy worker cannot start while another worker idles (measured: 2 workers x 250 slots, 500
    simultaneous 40 s streams through the gateway: with 2x prefetch the last stream started after
    39.5 s, with 1x after 1.6 s). With this bound a freed slot is refilled within 50 ms and the
    window can equal the slots (``Settings.effective_prefetch``); a full consumer wakes 20 times a
    second to find out, which costs nothing measurable.

    The credit an ack gives back also wakes a full consumer's wait at once (:meth:`credit_back`, a
    byte on a pipe the wait polls): a freed slot waited ~25 ms on average for the next poll, at 1 s
    jobs ~2.5 % of every slot's time; the bound stays for credit that comes back another way."""

    # kombu's, which its stubs omit
    _channels: list[Any]
    _paused_brpop: dict[int, Any]
    _fd_to_chan: dict[int, tuple[Any, str]]

    def __init__(self) -> None:
        super().__init__()
        #: When aged messages were last swept for (monotonic seconds; the first timed sweep comes one
        #: interval after the start): see :meth:`restore_on_time`.
        self._restored_at = time.monotonic()
        #: The wake-up pipe (read end, write end) of a full window's wait; made on first use.
        self._wake: tuple[int, int] | None = None
        #: True while a full window's wait is on (or about to start): an ack then writes the pipe.
        self._waiting_full = False

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        full = False
        if timeout is None or timeout > REFILL_POLL_S:
            for channel in self._channels:
                if channel.active_queues and not channel.qos.can_consume():
                    timeout = REFILL_POLL_S
                    full = True
                    break
        if full:
            # set before the poll starts: credit that comes back from here on wakes it
            self.poller.register(self._wake_pipe()[0], READ)
            self._waiting_full = True
        try:
            return super().get(callback, timeout)
        finally:
            self._waiting_full = False
            self.restore_on_time()

    def credit_back(self) -> None:
        """An ack gave a message's credit back: wake a full window's wait now (any thread or greenlet)."""
        if self._waiting_full and self._wake is not None:
            self._waiting_full = False
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                os.write(self._wake[1], b"\0")

    def _pause_brpop(self, channel: Any, fileno: int) -> None:
        """kombu's pause of a full window's wait (its socket no longer polled, the reply left unread
        until credit comes back: the message in it would overfill the window), except for a wait that
        carries a fetch: that fetch takes its messages as soon as the wait ends, and nothing would
        re-score them while the reply sat in the socket (a slot may free only after
        ``visibility_timeout``: restored, and then delivered here too). Its socket stays polled, and
        :meth:`on_readable` reads the reply when it comes."""
        if isinstance(channel, Channel) and channel.fetch_in_flight():
            return
        super()._pause_brpop(channel, fileno)  # type: ignore[misc]  # private kombu method the stubs omit

    def on_readable(self, fileno: int) -> Any:
        """kombu's, except for the reply of a wait that carries a fetch when the window is full (see
        :meth:`_pause_brpop`): read at once, and what the fetch took goes back to the queue."""
        found = None if fileno in self._paused_brpop else self._fd_to_chan.get(fileno)
        if found is not None:
            channel, kind = found
            if kind == "BRPOP" and isinstance(channel, Channel) and channel.fetch_in_flight():
                if not channel.qos.can_consume():
                    channel.read_with_window_full()  # (raises Empty: nothing delivered)
                    return None
        return super().on_readable(fileno)

    def handle_event(self, fileno: int, event: int) -> Any:
        wake = self._wake
        if wake is not None and fileno == wake[0]:
            with contextlib.suppress(OSError):  # drained (non-blocking)
                while os.read(wake[0], 4096):
                    pass
            return None  # nothing delivered: the consumer's next poll registers its wait on the queue
        return super().handle_event(fileno, event)

    def _wake_pipe(self) -> tuple[int, int]:
        if self._wake is None:
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            os.set_blocking(write_end, False)
            self._wake = (read_end, write_end)
        return self._wake

    def close(self) -> None:
        super().close()
        wake, self._wake = self._wake, None
        if wake is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(wake[0])
            for fd in wake:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def maybe_restore_messages(self) -> Any:
        self._restored_at = time.monotonic()
        return super().maybe_restore_messages()

    def restore_on_time(self, now: float | None = None) -> bool:
        """Sweep for aged messages (a dead or stopped worker's, left in ``unacked``) if none was made
        in the last ``unacked_restore_interval`` seconds; True if it swept.

        kombu sweeps from :meth:`get` only after a poll in which nothing answered, and from a timer of
        the event loop. A worker without that loop (gevent and eventlet pools: Celery's ``synloop``)
        whose wait answers before the poll's timeout (the bells' BLPOP times out after a second, the
        loop polls for two) never reached that sweep: the jobs a worker left in ``unacked`` (stopped
        while Redis was full) were never restored. Here every ``get`` checks the time, whatever the
        poll saw."""
        now = time.monotonic() if now is None else now
        interval = min((c.unacked_restore_interval for c in self._channels if c.active_queues), default=None)
        if interval is None or now - self._restored_at < interval:
            return False
        try:
            self.maybe_restore_messages()  # connection errors: skipped until the next sweep
        except Exception as exc:  # never masks what the poll raised (Empty, a lost connection)
            log.warning("broker: the sweep for aged messages failed (%s); tried again in %ss", exc, interval)
        return True


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same fetch and heartbeat over kombu's Sentinel channel (``sentinel://`` broker URLs)."""

    from_transport_options = (
        *kombu_redis.SentinelChannel.from_transport_options,
        "heartbeat_interval",
        "fetch_batch",
        "ack_flush_ms",
    )


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()


def install_transport() -> None:
    """Make this transport kombu's for ``redis://``, ``rediss://`` and ``sentinel://`` URLs in this
    process (a worker's, at start). Setting ``broker_transport`` alone does not last: when a connection
    fails over to the next URL of a ``;``-separated list (every Sentinel URL is one), kombu switches
    to the transport the URL's scheme names, and a worker on kombu's own transport would wait on the
    queue's plain list while producers queue into its schedule."""
    from kombu import transport as kombu_transport

    ours = {
        "redis": f"{__name__}:Transport",
        "rediss": f"{__name__}:Transport",
        "sentinel": f"{__name__}:SentinelTransport",
    }
    kombu_transport.TRANSPORT_ALIASES.update(ours)
    cache = getattr(kombu_transport, "_transport_cache", {})  # kombu's, which its stubs omit
    for alias in ours:  # resolved before (the app's own checks): resolved again, to ours
        cache.pop(alias, None)


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for a URL: ours for Redis and Sentinel, else None (kombu's)."""
    scheme = urlsplit(broker_url.split(";", 1)[0]).scheme
    if scheme in _SCHEMES:
        return f"{__name__}:Transport"
    if scheme == "sentinel":
        return f"{__name__}:SentinelTransport"
    return None
