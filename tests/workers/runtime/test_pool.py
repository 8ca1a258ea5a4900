"""GeventPool: an ended job's greenlet, and what the job left in it, is freed when the job ends."""

from __future__ import annotations

import contextvars
import weakref

import gevent
from celery import Celery

from workers.runtime.pool import GeventPool

#: A context variable a job sets (as the job's span ids and the read's abort signal are): its value
#: lives in the job greenlet's context as long as the greenlet does.
JOB_LOCAL: contextvars.ContextVar[object] = contextvars.ContextVar("test_job_local")


class JobLocal:
    pass


def test_an_ended_jobs_greenlet_and_context_are_freed_without_the_cyclic_gc(no_cyclic_gc: None) -> None:
    pool = GeventPool(limit=10, app=Celery(set_as_current=False))
    pool.start()
    locals_: list[weakref.ref[JobLocal]] = []
    greenlets: list[weakref.ref[object]] = []

    def job(i: int) -> int:
        local = JobLocal()
        locals_.append(weakref.ref(local))
        greenlets.append(weakref.ref(gevent.getcurrent()))
        JOB_LOCAL.set(local)
        gevent.sleep(0)
        return i

    results: list[object] = []
    for i in range(20):
        pool.apply_async(job, args=(i,), callback=results.append)
    pool.stop()  # joins the greenlets

    assert sorted(results) == list(range(20))  # type: ignore[type-var]
    assert len(locals_) == len(greenlets) == 20
    assert [ref for ref in greenlets if ref() is not None] == []
    assert [ref for ref in locals_ if ref() is not None] == []


def test_terminate_on_a_running_jobs_greenlet_is_still_a_no_op() -> None:
    """Celery calls it (through a weak reference) after ``terminate_job``, which did the work."""
    pool = GeventPool(limit=2, app=Celery(set_as_current=False))
    pool.start()
    greenlet = pool.apply_async(gevent.sleep, args=(0,), callback=lambda _: None)
    greenlet.terminate(15)
    pool.stop()
    assert greenlet.dead and greenlet.successful()
