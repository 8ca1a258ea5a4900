"""The worker-side class order used on RabbitMQ (workers/runtime/classpool.py): stride by class weight
over the jobs a worker holds, work-conserving, arrival order inside a class."""

from __future__ import annotations

import threading
from collections import Counter

from tests.support.waits import until
from workers.runtime.classpool import ClassDispatcher, priority_of


def _never() -> None:
    threading.Event().wait()  # the dispatcher thread never gets a slot: the test takes by hand


def _held(dispatcher: ClassDispatcher, items: list[tuple[str, str]]) -> None:
    for priority, name in items:
        dispatcher.submit(priority, lambda name=name: name)  # type: ignore[misc]


def _order(dispatcher: ClassDispatcher) -> list[str]:
    names = []
    while (start := dispatcher.next()) is not None:
        names.append(str(start()))
    return names


def test_held_jobs_start_by_class_weight_interleaved_and_fifo_inside_a_class() -> None:
    dispatcher = ClassDispatcher({"interactive": 8, "bulk": 1}, acquire=_never)
    _held(dispatcher, [("bulk", f"b{n}") for n in range(20)] + [("interactive", f"i{n}") for n in range(80)])
    order = _order(dispatcher)
    first = order[:90]
    assert Counter(name[0] for name in first) == {"i": 80, "b": 10}
    for start in range(0, 72, 9):  # every 9 starts: 8 interactive, 1 bulk
        assert Counter(name[0] for name in first[start : start + 9]) == {"i": 8, "b": 1}
    assert [n for n in order if n[0] == "b"] == [f"b{n}" for n in range(20)]  # arrival order in a class
    dispatcher.stop()


def test_a_class_alone_takes_every_slot_and_a_newcomer_gets_no_credit() -> None:
    dispatcher = ClassDispatcher(acquire=_never)
    _held(dispatcher, [("bulk", f"b{n}") for n in range(30)])
    assert _order(dispatcher)[:30] == [f"b{n}" for n in range(30)]  # work-conserving
    _held(dispatcher, [("bulk", f"c{n}") for n in range(20)] + [("normal", f"n{n}") for n in range(20)])
    order = _order(dispatcher)
    assert Counter(name[0] for name in order[:25]) == {"n": 20, "c": 5}  # 4 : 1 from now on, not 30 normal first
    dispatcher.stop()


def test_the_dispatcher_starts_jobs_as_slots_free() -> None:
    slots = threading.Semaphore(2)
    started: list[str] = []
    done = threading.Event()
    dispatcher = ClassDispatcher(acquire=slots.acquire)

    def start(name: str) -> None:
        started.append(name)
        if len(started) == 3:
            done.set()

    for n in range(3):
        dispatcher.submit("normal", lambda n=n: start(f"j{n}"))  # type: ignore[misc]
    until(lambda: len(started) >= 2, "two jobs to start", 10)
    assert started == ["j0", "j1"] and dispatcher.held() == 1  # two slots: the third waits for one
    slots.release()
    assert done.wait(10) and started == ["j0", "j1", "j2"]
    dispatcher.stop()


def test_the_class_comes_from_the_requests_scheduling_header() -> None:
    assert priority_of(("llmq.run_job", "id", {"llmq": {"priority": "bulk", "tenant": "t"}}, b"", "", "")) == "bulk"
    assert priority_of(("llmq.run_job", "id", {}, b"", "", "")) == "normal"
    assert priority_of(None) == "normal"
