"""The worker's garbage collector, set once the worker is built.

Two things, both measured on the queue bench's shape (``bench/RESULTS-queue.md``, "the collector"):

* What lives as long as the process (imports, settings, clients: ~95k objects) is moved out of the
  collector's sight (``gc.freeze``), so collections triggered by jobs do not re-scan it.
* Young collections run every :attr:`Settings.gc_young_threshold` net new container objects instead of
  Python's 700. A streaming job's objects (the response, its generators, the parsed deltas, the
  publisher's buffers) live about as long as the job, and nearly all die by reference counting. At
  700, a ``-P gevent -c 200`` worker at 1 s upstream ran ~0.45 young collections per job, each
  re-scanning the 200 running jobs' live objects and promoting them, then full collections of
  40–50 ms every ~250 jobs: 9–11 % of the worker's CPU (a ``gc.callbacks`` probe timing each
  collection with ``time.thread_time``). At 20,000 there is one young collection per ~120 jobs of
  ~10 ms and no older one during a 2,000-job run: ~3 % of the CPU, the worker's peak RSS unchanged
  (cycles a job leaves, ~10 objects, are still collected, by the next young collection).

``0`` leaves Python's thresholds alone. Only the young generation's threshold changes: the older
generations keep theirs (each collects after that many collections of the younger one).
"""

from __future__ import annotations

import gc

__all__ = ["settle_collector"]


def settle_collector(young_threshold: int) -> None:
    """Freeze what exists now and set the young generation's threshold (0: Python's)."""
    gc.collect()
    gc.freeze()
    if young_threshold > 0:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(young_threshold, older, oldest)
