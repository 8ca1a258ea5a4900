"""A job's answer as its events tell it: the deltas joined, started over when the answer is.

A job's text can start over twice over: a ``repair`` event (the answer failed its
``response_format`` and the model is asked again: its text is discarded), and the first event of a
new ``run`` (the job moved to another worker, whose run answers from the beginning; the earlier
run's deltas stay in the stream but are superseded). A consumer that joins ``delta`` texts as they
come shows the old text and the new one run together; :class:`AnswerText` keeps the current
answer's text and says when it started over, so a consumer can say so (``llmq subscribe`` and
``llmq submit --stream`` do, on stderr)::

    answer = AnswerText()
    for event in job.stream():
        if answer.feed(event):
            print("\\n[the answer starts over]")
        if event.type == "delta":
            print(event.text, end="", flush=True)
    answer.text  # the current answer, without what a repair or a lost run discarded
"""

from __future__ import annotations

from workers.contract import StreamEvent

__all__ = ["AnswerText"]


class AnswerText:
    """The current answer's text from a job's events, fed in ``seq`` order."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._run: int | None = None
        #: How many times the answer started over (repairs and new runs).
        self.restarts = 0

    def feed(self, event: StreamEvent) -> bool:
        """Take ``event``; True when the answer started over at it (the text so far is discarded).
        An event of an earlier run than one already seen changes nothing (a run that lost the job is
        fenced and writes nothing more, so this is only a defence)."""
        if self._run is not None and event.run < self._run:
            return False
        restarted = event.type == "repair" or (self._run is not None and event.run > self._run)
        if self._run is None or event.run > self._run:
            self._run = event.run
        if restarted:
            self._parts.clear()
            self.restarts += 1
        if event.type == "delta":
            self._parts.append(event.text)
        return restarted

    @property
    def run(self) -> int | None:
        """The run whose answer this is (None before any event)."""
        return self._run

    @property
    def text(self) -> str:
        return "".join(self._parts)
