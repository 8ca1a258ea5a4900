"""``AnswerText``: the current answer from a job's events, started over by a repair or a new run."""

from __future__ import annotations

from producers import AnswerText
from workers.contract import CompletionResult, DoneEvent, StartEvent
from workers.contract.events import DeltaEvent, RepairEvent


def _delta(seq: int, text: str, run: int = 1) -> DeltaEvent:
    return DeltaEvent(job_id="j", seq=seq, run=run, text=text)


def test_a_new_run_and_a_repair_each_start_the_answer_over() -> None:
    answer = AnswerText()
    events = [
        StartEvent(job_id="j", seq=0, model="m"),
        _delta(1, "Once "),
        _delta(2, "upon"),
        StartEvent(job_id="j", seq=3, run=2, model="m"),  # the worker died: run 2 answers again
        _delta(4, "{bad", run=2),
        RepairEvent(job_id="j", seq=5, run=2, attempt=1, errors=["not JSON"]),
        _delta(6, '{"ok": ', run=2),
        _delta(7, "true}", run=2),
        DoneEvent(job_id="j", seq=8, run=2, result=CompletionResult(id="j", status="succeeded")),
    ]
    restarted_at = [e.seq for e in events if answer.feed(e)]
    assert restarted_at == [3, 5]
    assert answer.restarts == 2 and answer.run == 2
    assert answer.text == '{"ok": true}'


def test_text_before_any_restart_is_kept_whole_and_an_older_runs_event_changes_nothing() -> None:
    answer = AnswerText()
    assert answer.run is None and answer.text == ""
    assert not answer.feed(StartEvent(job_id="j", seq=5, run=2, model="m"))  # joined at run 2: no restart
    assert not answer.feed(_delta(6, "a", run=2))
    assert not answer.feed(_delta(7, "stale", run=1))  # (fencing keeps it out of a real stream)
    assert not answer.feed(_delta(8, "b", run=2))
    assert answer.text == "ab" and answer.restarts == 0
