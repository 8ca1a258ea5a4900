"""The process's jobs as a worker's shutdown sees them: stop taking new ones, hand running ones back.

The pool (``workers/runtime/pool.py``) and the worker program (``workers/runtime/shutdown.py``) reach
them through the app Celery gives them; the app's state (``workers/runtime/state.py``, which builds
the runner) answers. Kept apart so that neither needs the state's module, nor gevent's pool.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["RunningJobs", "running_jobs"]


class RunningJobs(Protocol):
    """What a shutdown asks of the process's jobs (the app's state, ``workers/runtime/state.py``)."""

    def stop_taking_jobs(self) -> None:
        """A job that starts from now on goes back to the queue unclaimed."""

    def hand_back_all(self) -> int:
        """Stop every running job without ending it; their tasks re-queue them. Returns how many."""


def running_jobs(app: Any) -> RunningJobs | None:
    """The jobs of ``app``'s process (the worker's app, which Celery gives its pool and worker)."""
    jobs: RunningJobs | None = getattr(app, "llmq", None)
    return jobs
