"""What the simulator answers: deterministic text, tool calls and the fault plan of a request.

Faults are chosen per request, three ways:

* in the model name, after a ``~``: ``gpt-4o~503,503`` answers 503 to the first two requests
  of a job (keyed by the ``x-llmq-job-id`` header, else by the model string) and succeeds after;
  a trailing ``*`` repeats the last item forever (``gpt-4o~503*``);
* in an ``x-llmq-sim-fault`` request header, same syntax;
* by rates given on the command line (``--fault-rate 429=0.05,503=0.02``), seeded, so runs repeat.

Fault items: ``ok``, ``429`` (retry-after 1 s), ``429@S`` (retry-after S s), ``429ms@MS``
(retry-after-ms), ``quota`` (429 insufficient_quota), ``400``, ``401``, ``403``, ``404``,
``context`` (400 context_length_exceeded), ``500``, ``502``, ``503``, ``529``, ``midstream``
(an error event after a few deltas), ``stall@S`` (stop sending for S s mid-stream), ``cut`` (close
the connection mid-stream without the terminator), ``malformed`` (a broken line mid-stream),
``slow@S`` (first token after S s), ``nousage`` (stream without a usage chunk), ``tools`` (answer
with a tool call for the first declared tool).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

__all__ = ["Fault", "FaultPlanner", "Script", "parse_fault", "split_model", "words_for"]

_VOCAB = (
    "the queue runs every job once and streams each token to its subscribers while the ledger "
    "counts tokens and cents so that spending stops at the budget and retries wait as long as "
    "the provider asks before a fallback model answers the request quickly"
).split()


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # "ok" or a fault item name
    arg: float | None = None


OK = Fault("ok")


def parse_fault(item: str) -> Fault:
    item = item.strip().lower()
    if not item:
        return OK
    name, _, arg = item.partition("@")
    try:
        value = float(arg) if arg else None
    except ValueError as exc:
        raise ValueError(f"bad fault argument in {item!r}") from exc
    return Fault(name, value)


def split_model(model: str) -> tuple[str, str | None]:
    base, sep, plan = model.partition("~")
    return base, (plan if sep else None)


@dataclass(slots=True)
class _Sequence:
    items: list[Fault]
    repeat_last: bool
    position: int = 0

    def next(self) -> Fault:
        if self.position < len(self.items):
            fault = self.items[self.position]
            self.position += 1
            return fault
        return self.items[-1] if self.repeat_last and self.items else OK


def _parse_plan(plan: str) -> _Sequence:
    repeat = plan.endswith("*")
    items = [parse_fault(p) for p in plan.rstrip("*").split(",") if p.strip()]
    return _Sequence(items, repeat)


@dataclass(slots=True)
class FaultPlanner:
    """Decides the fault for each request; keeps per-key positions for scripted sequences."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 7
    _sequences: dict[str, _Sequence] = field(default_factory=dict)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reset(self) -> None:
        self._sequences.clear()
        self._rng = random.Random(self.seed)

    def choose(self, model: str, header: str | None, key: str | None) -> Fault:
        _, plan = split_model(model)
        plan = header or plan
        if plan:
            seq_key = f"{key or ''}|{model}|{plan}"
            seq = self._sequences.get(seq_key)
            if seq is None:
                seq = self._sequences[seq_key] = _parse_plan(plan)
            return seq.next()
        if self.rates:
            roll = self._rng.random()
            acc = 0.0
            for item, rate in self.rates.items():
                acc += rate
                if roll < acc:
                    return parse_fault(item)
        return OK


def words_for(prompt: str, count: int) -> list[str]:
    """``count`` deterministic tokens for a prompt: same prompt, same answer."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    start = int.from_bytes(digest, "big") % len(_VOCAB)
    out = []
    for i in range(count):
        word = _VOCAB[(start + i * 7) % len(_VOCAB)]
        out.append(word if i == 0 else " " + word)
    return out


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


@dataclass(slots=True)
class Script:
    """The planned answer to one request."""

    tokens: list[str]
    prompt_tokens: int
    tool_call: tuple[str, str] | None = None  # (name, arguments JSON)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) if self.tool_call is None else max(1, estimate_tokens(self.tool_call[1]))
