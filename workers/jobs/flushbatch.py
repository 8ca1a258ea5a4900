"""One Redis round trip for the event flushes of all the jobs a worker process runs at once.

What: a per-process batcher. Each job's flush (``workers/jobs/events.py``: one ``EVALSHA`` of the
publish script) is queued here; one batcher thread (a greenlet under gevent: it is a
``threading.Thread``, started lazily on the first flush, never at import) sends everything queued
as one pipelined write on one connection and reads the replies in order. Each caller waits for
*its* reply only and gets its own outcome: the script's result (fencing ``-1``, cancel ``1``) or
the Redis error of its command; another caller's error never reaches it.

Why: measured on a ``-P gevent -c 200`` worker (1 s upstream, 20 deltas per job, ~130 jobs/s,
6.9 ms CPU per job), ``EventPublisher._send`` was 18 % of py-spy's samples and gevent's socket code
16 % of self time: ~10 coalesced flushes per job, each its own send, hub switch, recv and parse,
~1,300 separate round trips a second that can travel together. The batcher adds no wait of its own:
it takes whatever queued while the previous batch was on the wire (at most ``max_batch`` commands).
Measured on that worker, on vs off in one run (``bench/RESULTS-queue.md``, three runs): CPU per job
0.875x, 0.892x, 0.906x; Redis read events per job 16.1, 16.8, 15.5 vs 24.3, 24.3, 22.5; under load a
flush may wait ~2 ms for the batch on the wire.

Semantics kept per job, as a direct call would have them:

- Order: a caller waits for its reply before its job flushes again, and batches go out one at a
  time in FIFO order, so a job's ``XADD`` ids ``<seq>-1`` still increase.
- ``NOSCRIPT`` (Redis restarted or ``SCRIPT FLUSH``): the script is loaded once on the batch's
  connection and those commands sent again (as redis-py's ``Script`` does; no ``SCRIPT EXISTS``
  per batch, which ``Pipeline.execute`` with registered scripts would add).
- Connection errors follow the connection's retry policy, the one a direct call uses
  (``conn.retry``; the worker's client has none: ``workers/connections/redisclient.py`` hands every
  option to the pool's connections, and redis-py's connection default is no retry). Replies read
  before the connection broke are delivered (those flushes were applied: a direct call would have
  returned them); the unanswered commands fail with the error, or, under a retry policy, are sent
  again, each as its own direct call would have been. A re-sent flush that had been applied fails
  in the script on its ``XADD`` id (not above the stream's last) before its ``PUBLISH``: nothing is
  duplicated, the caller gets that error, exactly as a retried direct call.
- Closing: :meth:`FlushBatcher.close` sends what is queued and stops the batcher; a flush queued
  after (or not sent within ``drain_s``) falls back to a direct call; one on the wire when
  ``drain_s`` runs out fails with :class:`FlushBatcherClosedError` (a ``redis.ConnectionError``:
  its outcome is unknown, the job treats it as a lost Redis). Nobody is left waiting.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT, KeyT

__all__ = ["FlushBatcher", "FlushBatcherClosedError"]


class FlushBatcherClosedError(redis.ConnectionError):
    """The batcher stopped while this flush was on the wire: whether Redis applied it is unknown."""


class _Direct(Exception):
    """Settles a flush the batcher will not send: its caller runs it as a direct call."""


_DIRECT = _Direct()


class _Request:
    __slots__ = ("abandoned", "command", "done", "error", "reply", "waiter")

    def __init__(self, command: tuple[EncodableT, ...]) -> None:
        self.command = command
        self.reply: Any = None
        self.error: BaseException | None = None
        self.done = False
        #: Its caller stopped waiting (interrupted): not sent if still queued.
        self.abandoned = False
        # held until settled; the caller blocks acquiring it again (cheapest wait under both pools)
        self.waiter = threading.Lock()
        self.waiter.acquire()


class FlushBatcher:
    """Runs one Lua script for many callers, pipelined: one round trip per batch.

    ``client``'s connection pool lends the batcher one connection, kept until it stops. Thread- and
    greenlet-safe; :meth:`call` blocks its caller until its own reply is in.
    """

    def __init__(self, client: redis.Redis, script: str, *, max_batch: int = 128, drain_s: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._client = client
        self._script_text = script
        self._script = client.register_script(script)
        self._sha = self._script.sha
        self._max_batch = max_batch
        self._drain_s = drain_s
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Request] = deque()
        self._settle_lock = threading.Lock()
        self._inflight: list[_Request] = []
        #: The connection the batcher keeps between batches (lent by the pool once, given back when
        #: the batcher stops; checked before each batch as a checkout would be): a checkout and a
        #: release per batch, each with the pool's fork check and lock, were ~2 % of a streaming
        #: worker's samples at 1 s upstream.
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._held = False
        #: The batcher waits for work (a caller wakes it; else it takes the queue when it comes back).
        self._idle = False
        #: Round trips made for flushes (batches; after a ``NOSCRIPT`` the load and the re-send too)
        #: and commands sent.
        self.round_trips = 0
        self.commands = 0

    # --- callers ------------------------------------------------------------------------------------

    def call(self, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        """The script's reply for ``keys`` and ``args``, sent in the next batch; raises its error."""
        request = _Request(("EVALSHA", self._sha, len(keys), *keys, *args))
        with self._cond:
            queued = not self._closed
            if queued:
                if self._thread is None:
                    self._start()
                self._queue.append(request)
                if self._idle:
                    self._cond.notify()
        if not queued:
            return self.direct(keys, args)
        try:
            request.waiter.acquire()
        except BaseException:
            request.abandoned = True  # gevent.Timeout, a killed greenlet: not sent if still queued
            raise
        error = request.error
        if error is None:
            return request.reply
        if error is _DIRECT:
            return self.direct(keys, args)
        raise error

    def direct(self, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        """The same script as a direct call of its own (redis-py's ``Script``: loads it on ``NOSCRIPT``)."""
        return self._script(keys=list(keys), args=list(args))

    @property
    def queued(self) -> int:
        """Flushes waiting for the next batch."""
        return len(self._queue)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Take no new batch inside this block (a test seam: callers queue up, then go as one batch)."""
        with self._cond:
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify()

    def close(self) -> None:
        """Send what is queued and stop. Safe to call twice, and with no batcher ever started."""
        with self._cond:
            self._closed = True
            self._held = False
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._drain_s)
        # whatever the batcher did not finish (stuck on a dead socket, or gone): nobody waits on it
        with self._cond:
            queued = list(self._queue)
            self._queue.clear()
            inflight = list(self._inflight)
        for request in queued:
            self._settle(request, error=_DIRECT)
        closed = FlushBatcherClosedError("the flush batcher closed before Redis answered this flush")
        for request in inflight:
            self._settle(request, error=closed)

    # --- the batcher --------------------------------------------------------------------------------

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="llmq-flush-batcher", daemon=True)
        self._thread = thread
        thread.start()

    def _settle(self, request: _Request, reply: Any = None, error: BaseException | None = None) -> None:
        with self._settle_lock:
            if request.done:
                return
            request.done = True
        request.reply = reply
        request.error = error
        request.waiter.release()

    def _take(self) -> list[_Request] | None:
        """The next batch (queue order, at most ``max_batch``), or None once closed and drained."""
        with self._cond:
            while not self._queue or self._held:
                if self._closed and not self._held and not self._queue:
                    return None
                self._idle = True
                try:
                    self._cond.wait()
                finally:
                    self._idle = False
            queue = self._queue
            batch: list[_Request] = []
            while queue and len(batch) < self._max_batch:
                request = queue.popleft()
                if not request.abandoned:
                    batch.append(request)
            self._inflight = batch
            return batch

    def _run(self) -> None:
        try:
            while True:
                batch = self._take()
                if batch is None:
                    return
                try:
                    if batch:
                        self._send(batch)
                except BaseException as exc:
                    # a bug, or this greenlet killed: nobody of the batch may wait forever
                    error: BaseException = exc
                    if not isinstance(exc, Exception):
                        error = FlushBatcherClosedError(f"the flush batcher stopped: {type(exc).__name__}")
                    for request in batch:
                        self._settle(request, error=error)
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    with self._cond:
                        self._inflight = []
        finally:
            with self._cond:
                self._closed = True
                queued = list(self._queue)
                self._queue.clear()
            for request in queued:
                self._settle(request, error=_DIRECT)
            conn, self._conn = self._conn, None
            if conn is not None:
                self._client.connection_pool.release(conn)

    def _send(self, batch: list[_Request]) -> None:
        """One batch on the batcher's connection (lent by the pool on first use, then kept; a broken
        one is disconnected and connects again on the next send), with its retry policy."""
        pool = self._client.connection_pool
        conn = self._conn
        try:
            if conn is None:
                conn = self._conn = pool.get_connection()
            else:  # what a checkout checks: connected, and nothing unread (a server that hung up reconnects)
                pool.ensure_connection(conn)
        except Exception as exc:  # nothing was sent: each caller gets what its direct call would
            for request in batch:
                self._settle(request, error=exc)
            return
        try:
            conn.retry.call_with_retry(
                lambda: self._exchange(conn, [r for r in batch if not r.done and not r.abandoned]),
                lambda _error: conn.disconnect(),
            )
        except Exception as exc:
            conn.disconnect()  # replies may be left unread on it
            for request in batch:  # the ones without a reply: their outcome is this error
                self._settle(request, error=exc)

    def _exchange(self, conn: Any, requests: list[_Request]) -> None:
        """Send ``requests`` in one write and settle each from its reply, in order; commands that
        met ``NOSCRIPT`` are sent again once after loading the script. A connection error raises,
        leaving the unanswered requests unsettled."""
        reloaded = False
        while requests:
            conn.send_packed_command(conn.pack_commands([r.command for r in requests]))
            self.round_trips += 1
            self.commands += len(requests)
            again: list[_Request] = []
            for request in requests:
                try:
                    reply = conn.read_response()
                except NoScriptError as exc:
                    if reloaded:
                        self._settle(request, error=exc)
                    else:
                        again.append(request)
                except ResponseError as exc:
                    self._settle(request, error=exc)
                else:
                    self._settle(request, reply)
            if again:
                conn.send_command("SCRIPT", "LOAD", self._script_text)
                self.round_trips += 1
                conn.read_response()
                reloaded = True
            requests = again
