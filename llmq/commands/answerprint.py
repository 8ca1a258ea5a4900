"""How ``llmq submit --stream`` and ``llmq subscribe`` print a job's deltas as they come.

The text goes to stdout as it arrives. When the answer starts over (a ``repair``, or a new ``run`` of
a job that moved to another worker: :class:`producers.answer.AnswerText`), stdout starts a new line
and stderr says why, instead of the old and the new text running together.
"""

from __future__ import annotations

import sys
from typing import TextIO

from producers.answer import AnswerText
from workers.contract import StreamEvent

__all__ = ["DeltaPrinter"]


class DeltaPrinter:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err
        self.answer = AnswerText()
        #: Text was written since the last new line.
        self._open_line = False

    def feed(self, event: StreamEvent) -> None:
        out = self._out or sys.stdout
        err = self._err or sys.stderr
        if self.answer.feed(event):
            if self._open_line:
                out.write("\n")
                out.flush()
                self._open_line = False
            why = (
                "the answer failed its response format and is asked again"
                if event.type == "repair"
                else f"the job runs again (run {event.run}: its worker was lost)"
            )
            print(f"llmq: {why}; its answer starts over", file=err, flush=True)
        if event.type == "delta" and event.run == self.answer.run and event.text:
            out.write(event.text)
            out.flush()
            self._open_line = True

    def end_line(self) -> None:
        """The stream ended: finish the line the text is on."""
        out = self._out or sys.stdout
        out.write("\n")
        out.flush()
        self._open_line = False
