"""One timer for all paced streams.

A paced stream writes one token every ``gap`` seconds. Doing that with ``asyncio.sleep`` per
token costs a future, a timer handle and a task step per token; with ~1000 concurrent streams
that dominates the simulator's CPU. The :class:`Pacer` keeps every paced stream in one heap
ordered by due time and writes due tokens from a single timer callback (tokens due within
``slack`` seconds of each other go out in the same callback). A stream's coroutine awaits one
future per run of tokens instead of one sleep per token.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator

__all__ = ["Pacer"]


class _Run:
    __slots__ = ("done", "gap", "is_closing", "tokens", "write")

    def __init__(
        self,
        tokens: Iterator[bytes],
        write: Callable[[bytes], None],
        is_closing: Callable[[], bool],
        gap: float,
        done: asyncio.Future[None],
    ) -> None:
        self.tokens = tokens
        self.write = write
        self.is_closing = is_closing
        self.gap = gap
        self.done = done

    def step(self) -> bool:
        """Write the next token; ``False`` when the run is over (finished or abandoned)."""
        if self.done.done():  # the stream's task was cancelled: the client went away
            return False
        if self.is_closing():
            self.done.set_result(None)
            return False
        data = next(self.tokens, None)
        if data is None:
            self.done.set_result(None)
            return False
        self.write(data)
        return True


class Pacer:
    def __init__(self, slack: float = 0.001) -> None:
        self.slack = slack
        self._heap: list[tuple[float, int, _Run]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    async def run(
        self,
        chunks: Iterable[bytes],
        write: Callable[[bytes], None],
        is_closing: Callable[[], bool],
        gap: float,
        first_delay: float = 0.0,
    ) -> None:
        """Write ``chunks`` one every ``gap`` seconds, the first after ``first_delay``."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        run = _Run(iter(chunks), write, is_closing, gap, done)
        due = loop.time() + first_delay
        if first_delay <= 0 and run.step():
            due += gap
        if not done.done():
            self._push(loop, due, run)
        await done

    def _push(self, loop: asyncio.AbstractEventLoop, due: float, run: _Run) -> None:
        heapq.heappush(self._heap, (due, next(self._order), run))
        if self._timer is None or due < self._timer_due - self.slack:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(due, self._fire, loop)
            self._timer_due = due

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        heap = self._heap
        horizon = loop.time() + self.slack
        pop, push = heapq.heappop, heapq.heappush
        while heap and heap[0][0] <= horizon:
            due, order, run = pop(heap)
            try:
                more = run.step()
            except Exception as exc:  # one broken stream must not stop the others
                if not run.done.done():
                    run.done.set_exception(exc)
                continue
            if more:
                push(heap, (due + run.gap, order, run))
        if heap:
            self._timer_due = heap[0][0]
            self._timer = loop.call_at(self._timer_due, self._fire, loop)
