"""What the simulator answers: deterministic text, tool calls and the fault plan of a request.

Faults are chosen per request, three ways:

* in the model name, after a ``~``: ``gpt-4o~503,503`` answers 503 to the first two requests
  of a job (keyed by the ``x-llmq-job-id`` header, the path and the model string; without a
  job id the position is shared by all requests for that path and model) and succeeds after;
  a trailing ``*`` repeats the last item forever (``gpt-4o~503*``);
* in an ``x-llmq-sim-fault`` request header, same syntax (it wins over the model suffix);
* by rates given on the command line (``--fault-rate 429=0.05,503=0.02``), seeded, so runs repeat.

Fault items (what each looks like on the wire, per protocol, is in ``simulator/README.md``):
``ok``; HTTP errors ``429`` (retry-after 1 s), ``429@S`` (retry-after S s), ``429ms@MS``
(retry-after-ms), ``quota`` (insufficient quota), ``context`` (prompt too long), ``400``, ``401``,
``403``, ``404``, ``500``, ``502``, ``503``, ``529`` and any other 4xx/5xx number; stream faults
``midstream`` (an error event after half the tokens), ``stall@S`` (S s of silence mid-stream,
default an hour), ``cut`` (connection closed mid-stream, no terminator), ``malformed`` (a broken
line mid-stream), ``slow@S`` (first token S s late), ``nousage`` (no token counts where the format
allows), ``tools`` / ``tools@N`` (N tool calls instead of text, cycling over the declared tools),
``cache@N`` (N of the prompt's tokens reported as read from the prompt cache; ``cachew@N``: written
to it, Anthropic only), ``badjson`` (an answer that is not valid JSON / not valid for the requested
schema; plan ``badjson,badjson`` for two in a row), ``refusal`` (the model declines: OpenAI's
``refusal``, Anthropic's ``refusal`` stop reason), ``filter`` (the provider's content filter stops
the answer halfway: ``content_filter``, Gemini's ``SAFETY``, Bedrock's ``content_filtered``,
Anthropic's ``refusal``), ``badargs`` / ``badargs@N`` (like ``tools``, but
every call's arguments violate its schema: ``gpt-4o~badargs,tools`` is a model that corrects
itself on the next turn); ``expire`` (a provider batch's line expires; see ``simulator/batches.py``).

A request whose last messages are tool results (and whose fault calls no tools) is answered with
text quoting every one of them (``Tool results: [1] ... [2] ...``), in all three wire formats,
so a test can see that a result reached the model; ``tools*`` keeps calling tools forever.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "BATCH_FAULTS",
    "HTTP_FAULTS",
    "OK",
    "STREAM_FAULTS",
    "Fault",
    "FaultPlanner",
    "Script",
    "ToolCall",
    "bad_tool_arguments",
    "parse_fault",
    "quote_tool_results",
    "split_model",
    "tool_arguments",
    "words_for",
]

_VOCAB = (
    "the queue runs every job once and streams each token to its subscribers while the ledger "
    "counts tokens and cents so that spending stops at the budget and retries wait as long as "
    "the provider asks before a fallback model answers the request quickly"
).split()

#: Faults answered with an HTTP error status instead of a completion.
HTTP_FAULTS = frozenset({"429", "429ms", "quota", "context", "400", "401", "403", "404", "500", "502", "503", "529"})
#: Faults that shape a successful (200) answer.
STREAM_FAULTS = frozenset(
    {
        "midstream",
        "cut",
        "malformed",
        "stall",
        "slow",
        "nousage",
        "tools",
        "badargs",
        "cache",
        "cachew",
        "badjson",
        "refusal",
        "filter",
    }
)
#: Faults of a provider batch's line only (a live request answers as if none was planned).
BATCH_FAULTS = frozenset({"expire"})
#: Cap on remembered per-job sequences (oldest forgotten first).
MAX_SEQUENCES = 50_000


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # "ok" or a fault item name
    arg: float | None = None

    @property
    def is_http_error(self) -> bool:
        return self.kind in HTTP_FAULTS or self.kind.isdigit()

    def __str__(self) -> str:
        if self.arg is None:
            return self.kind
        return f"{self.kind}@{int(self.arg) if self.arg == int(self.arg) else self.arg}"


OK = Fault("ok")


def parse_fault(item: str) -> Fault:
    """One fault item; ``ValueError`` for anything the simulator does not know."""
    item = item.strip().lower()
    if not item:
        return OK
    name, _, arg = item.partition("@")
    try:
        value = float(arg) if arg else None
    except ValueError as exc:
        raise ValueError(f"bad fault argument in {item!r}") from exc
    if value is not None and value < 0:
        raise ValueError(f"negative fault argument in {item!r}")
    known = name == "ok" or name in HTTP_FAULTS or name in STREAM_FAULTS or name in BATCH_FAULTS
    if not known and not (name.isdigit() and 400 <= int(name) <= 599):
        raise ValueError(f"unknown fault item {item!r}")
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


def parse_plan(plan: str) -> _Sequence:
    repeat = plan.endswith("*")
    items = [parse_fault(p) for p in plan.rstrip("*").split(",") if p.strip()]
    return _Sequence(items, repeat)


def parse_rates(rates: dict[str, float]) -> list[tuple[Fault, float]]:
    """Validate ``{"429": 0.05, ...}`` into faults; ``ValueError`` on unknown items or bad rates."""
    out = [(parse_fault(item), float(rate)) for item, rate in rates.items()]
    if any(rate < 0 for _, rate in out) or sum(rate for _, rate in out) > 1.0 + 1e-9:
        raise ValueError("fault rates must be >= 0 and add up to at most 1")
    return out


@dataclass(slots=True)
class FaultPlanner:
    """Decides the fault for each request; keeps per-key positions for scripted sequences."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 7
    _sequences: dict[str, _Sequence] = field(default_factory=dict)
    _rng: random.Random = field(init=False)
    _parsed_rates: tuple[dict[str, float], list[tuple[Fault, float]]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reset(self) -> None:
        self._sequences.clear()
        self._rng = random.Random(self.seed)

    def choose(self, model: str, header: str | None, key: str | None, path: str = "") -> Fault:
        """The fault for one request; ``ValueError`` when the plan names an unknown item.

        A plan's position is kept per (job key, path, model, plan): each upstream endpoint and
        model of a job walks its own copy of the sequence.
        """
        _, plan = split_model(model)
        plan = header or plan
        if plan:
            seq_key = f"{key or ''}|{path}|{model}|{plan}"
            seq = self._sequences.get(seq_key)
            if seq is None:
                seq = parse_plan(plan)
                if len(self._sequences) >= MAX_SEQUENCES:
                    del self._sequences[next(iter(self._sequences))]
                self._sequences[seq_key] = seq
            return seq.next()
        if self.rates:
            if self._parsed_rates is None or self._parsed_rates[0] != self.rates:
                self._parsed_rates = (dict(self.rates), parse_rates(self.rates))
            roll = self._rng.random()
            acc = 0.0
            for fault, rate in self._parsed_rates[1]:
                acc += rate
                if roll < acc:
                    return fault
        return OK


def words_for(prompt: str, count: int) -> tuple[str, ...]:
    """``count`` deterministic tokens for a prompt: same prompt, same answer."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return _words(int.from_bytes(digest, "big") % len(_VOCAB), count)


@lru_cache(maxsize=2048)
def _words(start: int, count: int) -> tuple[str, ...]:
    words = [_VOCAB[(start + i * 7) % len(_VOCAB)] for i in range(count)]
    return tuple(word if i == 0 else " " + word for i, word in enumerate(words))


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


_SAMPLES: dict[str, object] = {"integer": 42, "number": 1.5, "boolean": True, "array": [], "object": {}, "null": None}


def tool_arguments(schema: object, prompt: str) -> dict[str, object]:
    """Plausible arguments for a JSON schema: one value per property (strings quote the prompt)."""
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    out: dict[str, object] = {}
    for name, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if isinstance(spec, dict) and isinstance(spec.get("enum"), list) and spec["enum"]:
            out[name] = spec["enum"][0]
        elif isinstance(spec, dict) and isinstance(spec.get("examples"), list) and spec["examples"]:
            out[name] = spec["examples"][0]
        elif isinstance(spec, dict) and "default" in spec:
            out[name] = spec["default"]
        elif kind in _SAMPLES:
            out[name] = _SAMPLES[kind]
        else:
            out[name] = prompt[-40:].strip() or "simulated"
    return out


#: A value of the wrong JSON type for each schema type (strings get a number, the rest a string).
_WRONG: dict[str, object] = {"string": 12345, "integer": "not a number", "number": "not a number"}


def bad_tool_arguments(schema: object) -> dict[str, object]:
    """Arguments that violate a JSON schema: every property gets a value of the wrong type."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict) or not props:
        return {"__unexpected__": True}
    out: dict[str, object] = {}
    for name, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        kind = kind[0] if isinstance(kind, list) and kind else kind
        out[name] = _WRONG.get(kind, 12345) if isinstance(kind, str) else "wrong"
    return out


def quote_tool_results(results: Sequence[str]) -> tuple[str, ...]:
    """The answer to a turn ending with tool results: text quoting each result, as tokens."""
    text = "Tool results: " + " ".join(f"[{i}] {r}" for i, r in enumerate(results, 1))
    words = text.split(" ")
    return tuple(w if i == 0 else " " + w for i, w in enumerate(words))


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, object]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":")) if self.arguments else "{}"


@dataclass(slots=True)
class Script:
    """The planned answer to one request."""

    tokens: Sequence[str]
    prompt_tokens: int
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: ``stop``, ``length``, ``tool``, ``refusal`` or ``filter`` (each protocol spells it its own way).
    finish: str = "stop"
    #: Of ``prompt_tokens``: reported as read from / written to the provider's prompt cache.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    #: Of ``cache_write_tokens``: written with a 1-hour TTL (Anthropic).
    cache_write_1h_tokens: int = 0
    #: The model declines (the ``refusal`` fault): OpenAI sends this as ``refusal``.
    refusal: str | None = None
    #: Extended thinking (Anthropic): sent as a signed ``thinking`` block before the answer; its
    #: tokens count as output, as the real API bills them.
    thinking: str = ""

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        thought = estimate_tokens(self.thinking) if self.thinking else 0
        if not self.tool_calls:
            return len(self.tokens) + thought
        return len(self.tokens) + thought + sum(estimate_tokens(c.name + c.arguments_json) for c in self.tool_calls)
