"""On RabbitMQ, the worker starts its received jobs by class weight: the broker's part there.

On Redis the broker's fetch decides who runs next (``workers/connections/lua/fetch.lua``) and a
worker holds no more jobs than it has slots. RabbitMQ cannot run that decision: each class is a
queue of its own (``workers/contract/schedule.py``), a worker consumes all three, and RabbitMQ
pushes each consumer up to the prefetch window. So the worker holds jobs of every class that has
any and starts them here, when a slot frees, by the classes' weights: the class whose pass is
lowest goes next, its pass then grows by 1/its weight (the same stride scheduling as the broker's,
per worker, over the jobs it holds). A class with nothing held is skipped (work-conserving); inside a
class, arrival order. Tenant weights and concurrency keys are not applied on RabbitMQ (README).

:class:`ClassDispatcher` sits between Celery's consumer and the pool: the pool's ``on_apply`` hands
it the start of each job instead of starting it, and one dispatcher thread (a greenlet under gevent)
starts the next one whenever the pool has a free slot.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from workers.contract.schedule import DEFAULT_CLASS_WEIGHTS, PRIORITIES, SCHED_HEADER

__all__ = ["ClassDispatcher", "priority_of"]

log = logging.getLogger("llmq.worker")


def priority_of(args: Any) -> str:
    """The class of a job from the arguments Celery gives the pool (the request's headers)."""
    try:
        header = args[2].get(SCHED_HEADER)
        priority = header.get("priority") if isinstance(header, dict) else None
    except (TypeError, IndexError, AttributeError):
        return "normal"
    return priority if priority in PRIORITIES else "normal"


class ClassDispatcher:
    """Starts held jobs by class weight, one whenever the pool has room.

    ``acquire`` blocks until the pool has a free slot (a semaphore of its size, released when a job
    ends: ``release``); pools whose own start blocks while full pass a no-op."""

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        acquire: Callable[[], object] = lambda: None,
        name: str = "llmq-class-dispatch",
    ) -> None:
        self.weights: dict[str, float] = {str(c): w for c, w in DEFAULT_CLASS_WEIGHTS.items()} | dict(weights or {})
        self._acquire = acquire
        self._waiting: dict[str, deque[Callable[[], object]]] = {p: deque() for p in PRIORITIES}
        self._passes: dict[str, float] = dict.fromkeys(PRIORITIES, 0.0)
        self._clock = 0.0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: str, start: Callable[[], object]) -> None:
        """Hold ``start`` (a job's start in the pool) until its class's turn and a free slot."""
        if priority not in self._waiting:
            priority = "normal"
        queue = self._waiting[priority]
        with self._cond:
            if not queue:  # the class joins with no credit for the time it had nothing held
                self._passes[priority] = max(self._passes[priority], self._clock)
            queue.append(start)
            self._cond.notify()

    def next(self) -> Callable[[], object] | None:
        """The next job's start, by weight (None when nothing is held); for tests and the loop."""
        with self._cond:
            return self._take()

    def _take(self) -> Callable[[], object] | None:
        held = [p for p in PRIORITIES if self._waiting[p]]
        if not held:
            return None
        priority = min(held, key=lambda p: (self._passes[p], PRIORITIES.index(p)))
        self._clock = self._passes[priority]
        self._passes[priority] += 1.0 / self.weights.get(priority, 1.0)
        return self._waiting[priority].popleft()

    def held(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._waiting.values())

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            self._acquire()  # a free slot first: the choice is made when a job can start
            with self._cond:
                while not self._stopped and not any(self._waiting.values()):
                    self._cond.wait()
                if self._stopped:
                    return
                start = self._take()
            if start is None:
                continue
            try:
                start()
            except Exception:  # Celery's own start failed: logged, the dispatcher goes on
                log.exception("worker: starting a job failed")
