"""Progress of a batch run: one redrawn line on a terminal, plain periodic lines otherwise.

Standard library only. On a TTY the line is redrawn at most every ``tty_interval_s`` with
``\\r`` (done, failed, in flight, tokens, cost, rate, ETA); when stderr is a file or a pipe
(CI logs, ``nohup``) a complete line is printed every ``plain_interval_s`` instead, so logs stay
readable. :meth:`BatchProgress.finish` prints the final summary either way.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from producers.units import usd

__all__ = ["BatchCounters", "BatchProgress", "format_duration"]


@dataclass
class BatchCounters:
    """Running totals of one run (this process only; earlier runs are counted in ``resumed``)."""

    #: valid lines still to run when the run started
    todo: int = 0
    succeeded: int = 0
    failed: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    #: lines found in the outputs of earlier runs (skipped)
    resumed: int = 0
    invalid: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _si(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


class BatchProgress:
    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        tty_interval_s: float = 0.1,
        plain_interval_s: float = 10.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = tty_interval_s if self.tty else plain_interval_s
        self.enabled = enabled
        self._clock = clock
        self._started = self._now()
        self._last = self._started
        self._drawn = False

    def _now(self) -> float:
        return self._clock()

    def line(self, c: BatchCounters) -> str:
        elapsed = max(1e-9, self._now() - self._started)
        rate = c.done / elapsed
        left = c.todo - c.done
        eta = format_duration(left / rate) if rate > 0 and left > 0 else "--:--"
        pct = f"{100 * c.done / c.todo:5.1f}%" if c.todo else "  -  "
        return (
            f"{pct} done {c.done}/{c.todo}  failed {c.failed}  in flight {c.in_flight}  "
            f"tokens {_si(c.tokens)}  cost {usd(c.cost_usd)}  {rate:.1f}/s  ETA {eta}"
        )

    def update(self, c: BatchCounters, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._now()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            width = shutil.get_terminal_size().columns - 1  # a wrapped line could not be redrawn
            self.stream.write("\r" + self.line(c)[:width] + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write("llmq batch: " + self.line(c) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (does not fight with the redrawn progress line)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, c: BatchCounters, *, interrupted: bool = False, extra: str = "") -> None:
        if not self.enabled:
            return
        if self._drawn:
            self.update(c, force=True)
            self.stream.write("\n")
            self._drawn = False
        elapsed = self._now() - self._started
        rate = c.done / elapsed if elapsed > 0 else 0.0
        state = "interrupted" if interrupted else "finished"
        self.stream.write(
            f"llmq batch {state} in {format_duration(elapsed)}: {c.succeeded} succeeded, {c.failed} failed, "
            f"{c.invalid} invalid, {c.resumed} already done earlier; tokens {c.prompt_tokens}+"
            f"{c.completion_tokens}, cost {usd(c.cost_usd)}, {rate:.1f} lines/s{extra}\n"
        )
        self.stream.flush()
