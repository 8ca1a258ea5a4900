"""Token pre-counts: exact for OpenAI models, labelled estimates for everyone else.

Every provider call is pre-counted so the context-window gate and the ledger's worst-case
reservation happen *before* any HTTP request. Counting follows OpenAI's cookbook
(``num_tokens_from_messages`` / ``num_tokens_for_tools``): 3 tokens per message, the encoded role
and every string value, +1 for a ``name``, +3 to prime the reply, and the cookbook's per-function
constants for tool definitions. Tool *calls* inside assistant messages are not covered by the
cookbook; we count their name and arguments plus :data:`TOOL_CALL_OVERHEAD`, a deliberately
generous constant (an over-count only makes the gate stricter).

Anthropic, Gemini, Bedrock, Ollama and OpenAI-compatible servers, and OpenAI model names tiktoken
does not know, are counted with ``cl100k_base`` (its smaller vocabulary gives *more* tokens than
``o200k_base``, which is the safe side for tokenizers we cannot run offline) and multiplied by a
safety margin (default 1.1); the result says ``estimated=True``. A named provider
(``[providers.<name>]``) is counted by its type: ``azure`` and ``openai`` entries serving a model
tiktoken knows (``gpt-4o``...) are exact, everything else is such an estimate.

Offline: tiktoken downloads BPE files on first use. :func:`seed_tiktoken_cache` writes our bundled,
sha256-checked copies (``workers/accounting/data/*.tiktoken.gz``, byte-identical to OpenAI's) into whatever
cache directory tiktoken will read, before the first ``get_encoding``, so a worker without network
access counts tokens exactly as one with it (:mod:`workers.accounting.bpefiles`, which a worker can
import and load its encodings with before anything else).

The worker's counter (``compact=True``) does not build tiktoken's tokenizer for the bundled
encodings at all (~43 MB resident for ``o200k_base``): it counts with
:class:`~workers.accounting.compactbpe.CompactBPE`, which gives tiktoken's exact counts from the
same BPE files and pattern in ~7 MB (proven equal by ``tests/workers/accounting/test_compactbpe.py``).
Other encodings, and every counter that is not compacting, use tiktoken as before.
Nothing happens at import time: encodings load lazily, once per process, under a lock.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.accounting.bounded import TiktokenLengths, TokenLengths, bounded_len
from workers.accounting.bpefiles import (
    BUNDLED_ENCODINGS,
    compact_encoding,
    load_compacted,
    release_free_heap,
    seed_tiktoken_cache,
    tiktoken_cache_dir,
)
from workers.accounting.compactbpe import CompactBPE, compact_bpe
from workers.accounting.image_tokens import image_tokens
from workers.contract import Message, Tool, ToolCall, Usage, base_model_name, split_model_id
from workers.llm.errors import ConfigurationError

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "BUNDLED_ENCODINGS",
    "ESTIMATE_ENCODING",
    "TOOL_CALL_OVERHEAD",
    "CompactBPE",
    "MessageBreakdown",
    "TokenCount",
    "TokenCounter",
    "TokenLengths",
    "compact_encoding",
    "default_counter",
    "estimate_completion_tokens",
    "estimate_usage",
    "release_free_heap",
    "seed_tiktoken_cache",
    "tiktoken_cache_dir",
]

#: The encoding used for estimates (non-OpenAI models, unknown OpenAI names).
ESTIMATE_ENCODING = "cl100k_base"

# OpenAI cookbook constants (gpt-3.5-turbo-0613 onwards, gpt-4*, gpt-4o*).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
_FUNC_INIT, _PROP_INIT, _PROP_KEY, _ENUM_INIT, _ENUM_ITEM, _FUNC_END = 7, 3, 3, -3, 3, 12
#: Per tool call in an assistant message, on top of its encoded name and arguments.
TOOL_CALL_OVERHEAD = 8

_PLANS_MAX = 4096

# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A pre-count. ``estimated`` is True unless the model's own tokenizer was used."""

    tokens: int
    estimated: bool
    encoding: str


@dataclass(frozen=True, slots=True)
class MessageBreakdown:
    """Per-message raw counts, for the sliding-window trimmer.

    ``per_message[i]`` includes message ``i``'s overhead; ``fixed`` is the reply priming plus the
    tool definitions. Raw counts are unscaled: :meth:`total` applies the safety margin.
    """

    per_message: tuple[int, ...]
    fixed: int
    margin: float
    estimated: bool
    encoding: str

    def scaled(self, message_tokens: int) -> int:
        """The prompt count for messages whose raw counts sum to ``message_tokens``."""
        raw = self.fixed + message_tokens
        return math.ceil(raw * self.margin) if self.estimated else raw

    def total(self, indices: Iterable[int] | None = None) -> int:
        """The prompt count of the messages at ``indices`` (default: all)."""
        per = self.per_message
        return self.scaled(sum(per) if indices is None else sum(per[i] for i in indices))


# --- the counter ----------------------------------------------------------------------------------


class TokenCounter:
    """Counts prompts for any ``provider:model`` id. Thread-safe; share one per process.

    ``safety_margin`` multiplies estimates (non-OpenAI models); ``margins`` overrides it per
    provider name or type, e.g. ``{"anthropic": 1.2}``. ``types`` maps named providers to their
    type (``{"azure-eu": "azure"}``); other names are their own type.
    """

    def __init__(
        self,
        *,
        safety_margin: float = 1.1,
        margins: Mapping[str, float] | None = None,
        types: Mapping[str, str] | None = None,
        compact: bool = False,
    ) -> None:
        if safety_margin < 1.0 or any(m < 1.0 for m in (margins or {}).values()):
            raise ConfigurationError("token safety margins must be >= 1.0")
        self.safety_margin = safety_margin
        self.margins = dict(margins or {})
        self.types = dict(types or {})
        self._lock = threading.Lock()
        self._lengths: dict[str, TokenLengths] = {}
        self._roles: dict[str, dict[str, int]] = {}
        self._plans: dict[str, tuple[str, bool, float]] = {}
        #: The worker's choice: count the bundled encodings with :class:`CompactBPE` (never building
        #: tiktoken's tokenizer for them) and compact any other as it loads (:func:`compact_encoding`).
        self.compact = compact

    # encodings

    @property
    def loaded(self) -> tuple[str, ...]:
        """The encodings this counter has loaded so far, in load order (each loads on first use)."""
        return tuple(self._lengths)

    def encodings_for(self, models: Iterable[str]) -> list[str]:
        """The encodings counting ``models`` (``provider:model`` ids) needs, without loading any."""
        names: list[str] = []
        for model in models:
            name = self.plan(model)[0]
            if name not in names:
                names.append(name)
        return names

    def lengths(self, name: str) -> TokenLengths:
        """What counts encoding ``name``'s tokens, loaded once per process (offline: the bundled files).

        Compacting, a bundled encoding is a :class:`CompactBPE`, any other tiktoken's encoding
        compacted as it loads; else tiktoken's encoding, from the seeded cache."""
        lengths = self._lengths.get(name)
        if lengths is not None:
            return lengths
        with self._lock:
            lengths = self._lengths.get(name)
            if lengths is None:
                if self.compact and name in BUNDLED_ENCODINGS:
                    lengths = compact_bpe(name)  # the process-wide instance (a worker may have loaded it first)
                elif self.compact:
                    lengths = TiktokenLengths(load_compacted(name))
                else:
                    lengths = TiktokenLengths(self.encoding(name))
                self._roles[name] = {r: lengths.count(r) for r in ("system", "user", "assistant", "tool")}
                self._lengths[name] = lengths
        return lengths

    @staticmethod
    def encoding(name: str) -> tiktoken.Encoding:
        """tiktoken's encoding ``name`` (the process-wide instance, from the seeded cache): to
        decode, or to check a count against. Counting never needs it (:meth:`lengths`); in a
        worker, asking for a bundled one builds the tokenizer its counter does without (~43 MB)."""
        import tiktoken

        if name in BUNDLED_ENCODINGS:
            seed_tiktoken_cache()
        return tiktoken.get_encoding(name)

    def preload(self, names: Iterable[str] = BUNDLED_ENCODINGS) -> None:
        """Load the encodings ``names`` now (default: both bundled ones) rather than on first use.

        The worker preloads only what its default model needs (``o200k_base`` for
        ``openai:gpt-4o-mini``); any other encoding loads on the first job that counts with it.
        A compacting counter (``compact=True``) counts the bundled encodings with
        :class:`CompactBPE`: o200k_base takes ~7 MB (a mapped table file, shared by the workers of a
        host) instead of tiktoken's ~76 MB (~44 with its Python ranks dropped), cl100k_base ~4 MB
        instead of ~40 (CPython 3.11, tiktoken 0.14). The counts are tiktoken's."""
        for name in names:
            self.lengths(name)

    def plan(self, model: str) -> tuple[str, bool, float]:
        """``(encoding name, estimated, margin)`` for a ``provider:model`` id."""
        cached = self._plans.get(model)
        if cached is not None:
            return cached
        provider, name = split_model_id(model)
        kind = self.types.get(provider, provider)
        margin = self.margins.get(provider) or self.margins.get(kind) or self.safety_margin
        plan: tuple[str, bool, float] = (ESTIMATE_ENCODING, True, margin)
        if kind in ("openai", "azure"):  # OpenAI's models, wherever they are served
            import tiktoken.model

            with contextlib.suppress(KeyError):  # a name tiktoken does not know: estimate
                plan = (tiktoken.model.encoding_name_for_model(base_model_name(name)), False, 1.0)
        if len(self._plans) < _PLANS_MAX:  # model ids come from jobs: bound the memory
            self._plans[model] = plan
        return plan

    def type_of(self, model: str) -> str:
        """The provider type of a ``provider:model`` id (a named provider's, else its own name)."""
        provider = model.partition(":")[0]
        return self.types.get(provider, provider)

    # counting

    def count(self, model: str, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> TokenCount:
        """The prompt's token count: messages with overhead, tool calls, tool definitions."""
        enc_name, estimated, margin = self.plan(model)
        enc = self.lengths(enc_name)
        roles = self._roles[enc_name]
        parts: list[str] = []
        append = parts.append
        overhead = REPLY_PRIMING + TOKENS_PER_MESSAGE * len(messages)
        for m in messages:  # the hot loop: plain attribute reads, no model dumps
            overhead += roles[m.role]
            content = m.content
            if content:
                if isinstance(content, str):
                    append(content)
                else:
                    append(m.text)
                    overhead += _images_tokens(self.type_of(model), m)
            if m.tool_calls:
                overhead += _tool_call_parts(m.tool_calls, parts)
            if m.name:
                append(m.name)
                overhead += TOKENS_PER_NAME
            if m.tool_call_id:
                append(m.tool_call_id)
        text_tokens, exact = bounded_len(enc, parts)
        raw = overhead + text_tokens + (self._tools_tokens(enc, tools) if tools else 0)
        estimated = estimated or not exact  # a hard cut or the size cap (bounded.py): not exact
        return TokenCount(math.ceil(raw * margin) if estimated else raw, estimated, enc_name)

    def breakdown(self, model: str, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> MessageBreakdown:
        """Per-message counts (slower than :meth:`count`; only needed to trim)."""
        enc_name, estimated, margin = self.plan(model)
        enc = self.lengths(enc_name)
        return MessageBreakdown(
            per_message=tuple(self._message_tokens(enc, enc_name, m, model) for m in messages),
            fixed=REPLY_PRIMING + (self._tools_tokens(enc, tools) if tools else 0),
            margin=margin,
            estimated=estimated,
            encoding=enc_name,
        )

    def count_text(self, model: str, text: str) -> TokenCount:
        """Tokens of plain text (no message overhead), scaled when estimated."""
        enc_name, estimated, margin = self.plan(model)
        raw, exact = bounded_len(self.lengths(enc_name), [text]) if text else (0, True)
        estimated = estimated or not exact
        return TokenCount(math.ceil(raw * margin) if estimated else raw, estimated, enc_name)

    def _message_tokens(self, enc: TokenLengths, enc_name: str, m: Message, model: str) -> int:
        parts: list[str] = []
        n = TOKENS_PER_MESSAGE + self._roles[enc_name][m.role]
        if m.content:
            parts.append(m.text)
            if not isinstance(m.content, str):
                n += _images_tokens(self.type_of(model), m)
        if m.name:
            parts.append(m.name)
            n += TOKENS_PER_NAME
        if m.tool_call_id:
            parts.append(m.tool_call_id)
        if m.tool_calls:
            n += _tool_call_parts(m.tool_calls, parts)
        return n + _encoded_len(enc, parts)

    @staticmethod
    def _tools_tokens(enc: TokenLengths, tools: Sequence[Tool]) -> int:
        """The cookbook's ``num_tokens_for_tools``; schema beyond flat typed properties is
        counted as its JSON text (an over-count, never an under-count, for nested schemas)."""
        n = 0
        for tool in tools:
            f = tool.function
            n += _FUNC_INIT + _encoded_len(enc, [f"{f.name}:{(f.description or '').removesuffix('.')}"])
            params = f.parameters if isinstance(f.parameters, dict) else {}
            props = params.get("properties")
            if isinstance(props, dict) and props:
                n += _PROP_INIT
                for key, spec in props.items():
                    n += _PROP_KEY
                    spec = spec if isinstance(spec, dict) else {}
                    enum = spec.get("enum")
                    if isinstance(enum, list):
                        n += _ENUM_INIT
                        for item in enum:
                            n += _ENUM_ITEM + _encoded_len(enc, [str(item)])
                    desc = str(spec.get("description", "")).removesuffix(".")
                    n += _encoded_len(enc, [f"{key}:{spec.get('type', '')}:{desc}"])
                    extra = {k: v for k, v in spec.items() if k not in ("type", "description", "enum")}
                    if extra:
                        n += _encoded_len(enc, [json.dumps(extra, separators=(",", ":"))])
        return n + _FUNC_END


def _images_tokens(kind: str, message: Message) -> int:
    """The documented image tokens of a message's image parts (``image_tokens.py``)."""
    return sum(image_tokens(kind, part) for part in message.images)


def _tool_call_parts(calls: Sequence[ToolCall], parts: list[str]) -> int:
    for call in calls:
        parts.append(call.function.name)
        parts.append(call.function.arguments)
    return TOOL_CALL_OVERHEAD * len(calls)


def _encoded_len(enc: TokenLengths, parts: list[str]) -> int:
    """Summed token counts of ``parts``, bounded in time on hostile text (``bounded.py``)."""
    return bounded_len(enc, parts)[0]


# --- usage estimates for streams without usage ----------------------------------------------------

_default_lock = threading.Lock()
_default: TokenCounter | None = None


def default_counter() -> TokenCounter:
    """A process-wide counter with default margins, created on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = TokenCounter()
    return _default


def estimate_completion_tokens(
    text: str, model: str, tool_calls: Sequence[ToolCall] = (), *, counter: TokenCounter | None = None
) -> int:
    """Completion tokens of generated ``text`` (and tool calls), for a stream that reported none."""
    counter = counter or default_counter()
    enc_name, estimated, margin = counter.plan(model)
    parts = [text] if text else []
    raw = _tool_call_parts(tool_calls, parts) if tool_calls else 0
    raw += _encoded_len(counter.lengths(enc_name), parts)
    return math.ceil(raw * margin) if estimated else raw


def estimate_usage(
    prompt: TokenCount,
    text: str,
    model: str,
    tool_calls: Sequence[ToolCall] = (),
    *,
    counter: TokenCounter | None = None,
) -> Usage:
    """``Usage(estimated=True)`` from the pre-count and the generated text; settle with this."""
    completion = estimate_completion_tokens(text, model, tool_calls, counter=counter)
    return Usage(prompt_tokens=prompt.tokens, completion_tokens=completion, estimated=True)
