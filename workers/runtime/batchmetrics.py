"""The provider batches as Prometheus metrics, read from Redis when Prometheus scrapes.

==========================================  =====  ==================================================
``llmq_provider_batch_lines_waiting``       gauge  ``{model}`` lines parked, not yet in a batch
``llmq_provider_batches``                   gauge  ``{model, step}`` batches under way, by step
                                                   (``sealed`` ... ``running``)
``llmq_provider_batch_oldest_wait_seconds`` gauge  ``{model}`` how long the oldest waiting line waited
``llmq_provider_batch_lines_handed``        gauge  jobs producers handed to the lane, not taken yet by
                                                   a batcher (none running: they wait here)
==========================================  =====  ==================================================

``model`` is ``provider:model`` (the batches' groups: as few as the models jobs send to batches).
Every worker exports the same values (one state in Redis): query them with ``max by (...)``. What
each line cost and how long it waited are the jobs' own metrics (``workers/runtime/telemetry.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from workers.jobs.batchstate import BatchStore

__all__ = ["BatchCollector"]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BatchCollector(Collector):
    def __init__(self, store: BatchStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            "llmq_provider_batch_lines_waiting", "Lines parked for a provider batch, not yet in one.", labels=["model"]
        )
        oldest = GaugeMetricFamily(
            "llmq_provider_batch_oldest_wait_seconds",
            "How long the oldest line waiting for a provider batch has waited.",
            labels=["model"],
        )
        batches = GaugeMetricFamily(
            "llmq_provider_batches", "Provider batches under way, by step.", labels=["model", "step"]
        )
        handed = GaugeMetricFamily(
            "llmq_provider_batch_lines_handed",
            "Jobs producers handed straight to the provider batch lane, not taken yet by a batcher.",
        )
        store, r = self._store, self._store.redis
        handed.add_metric([], int(r.llen(store.intake)))
        scored: list[tuple[bytes, float]] = r.zrange(store.groups, 0, -1, withscores=True)  # type: ignore[assignment]
        groups = [(_text(g), float(since)) for g, since in scored]
        pipe = r.pipeline(transaction=False)
        for group, _ in groups:
            pipe.llen(store.group_list(group))
        now = self._clock()
        for (group, since), size in zip(groups, pipe.execute(), strict=True):
            waiting.add_metric([group], int(size))
            oldest.add_metric([group], max(0.0, now - since))
        keys = [_text(k) for k in r.zrange(store.active, 0, -1)]
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(store.batch_hash(key), "group", "state")
        steps: Counter[tuple[str, str]] = Counter()
        for group, step in pipe.execute():
            if group is not None and step is not None:
                steps[(_text(group), _text(step))] += 1
        for (group, step), count in sorted(steps.items()):
            batches.add_metric([group, step], count)
        yield handed
        yield waiting
        yield oldest
        yield batches
