"""What the worker's Celery app carries besides Celery's own configuration: a typed holder.

:class:`LLMQCelery` is Celery with one more attribute, :attr:`LLMQCelery.llmq`, an :class:`AppState`
set once by :func:`workers.runtime.app.create_app`: the settings the app was built from, the provider
environment seam, and the process's :class:`~workers.jobs.pipeline.JobRunner`, built on first use
(after any fork or monkey-patching) and closed at worker shutdown. The task and the app's signal
handlers both reach the runner through it, so neither module imports the other. Its ``Worker`` (what
``celery worker`` builds) is :class:`workers.runtime.shutdown.LLMQWorker`, imported when first used.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from celery import Celery

from workers.settings import Settings

if TYPE_CHECKING:
    from celery.apps.worker import Worker as CeleryWorker

    from workers.jobs.pipeline import JobRunner
    from workers.runtime.resources import WorkerResources

__all__ = ["AppState", "LLMQCelery"]


@dataclass
class AppState:
    settings: Settings
    #: Replaces ``os.environ`` as the source of provider keys and base URLs (never serialized).
    provider_env: Mapping[str, str] | None = None
    _built: tuple[WorkerResources, JobRunner] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def built(self) -> bool:
        """True once this process built its resources (a job ran, or the worker started)."""
        return self._built is not None

    def runner(self) -> JobRunner:
        """The process's JobRunner, built once on first use."""
        return self._build()[1]

    def resources(self) -> WorkerResources:
        """The process's shared resources (the runner's), built once on first use."""
        return self._build()[0]

    def _build(self) -> tuple[WorkerResources, JobRunner]:
        built = self._built
        if built is not None:
            return built
        with self._lock:
            if self._built is None:
                # imported here: importing the app stays light (Flower, producers' tooling) and the
                # worker's modules load after its pool is set up
                from workers.jobs.pipeline import JobRunner
                from workers.runtime.resources import WorkerResources

                resources = WorkerResources.build(self.settings, provider_env=self.provider_env)
                self._built = (resources, JobRunner(resources))
            return self._built

    def stop_taking_jobs(self) -> None:
        """The worker is shutting down: a job that starts from now on is handed back before it is
        claimed (nothing to do in a process that never ran one)."""
        built = self._built
        if built is not None:
            built[1].stop_taking_jobs()

    def hand_back_all(self) -> int:
        """Stop this process's running jobs without ending them (their tasks re-queue them)."""
        built = self._built
        return built[1].hand_back_all() if built is not None else 0

    def close(self) -> None:
        """Close the resources, if they were built; the next :meth:`runner` builds anew."""
        with self._lock:
            built, self._built = self._built, None
        if built is not None:
            built[0].close()


class LLMQCelery(Celery):
    """The Celery app of llmqueue workers: Celery plus :attr:`llmq`, and its own worker program."""

    llmq: AppState
    #: Worker events whose publishes never retry a lost broker forever (``workers/runtime/events.py``).
    events_cls = "workers.runtime.events:LLMQEvents"

    @cached_property
    def Worker(self) -> type[CeleryWorker]:
        """What ``celery worker`` runs: Celery's, with a soft shutdown that ends once no job runs and
        is safe under gevent (``workers/runtime/shutdown.py``)."""
        from workers.runtime.shutdown import LLMQWorker

        worker: type[CeleryWorker] = self.subclass_with_self(LLMQWorker)
        return worker
