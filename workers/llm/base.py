"""The provider abstraction: one request type, ``complete(model, request)`` and ``stream(model, request)``.

A provider module only translates our contract into its wire format and back. Everything that
cuts across providers (retries, fallback, rate limits, metrics) wraps a :class:`Provider` from the
outside; no provider branches live in shared code.

``stream()`` returns a :class:`ChatStream`: iterating it yields text deltas as ``str`` (the hot
path allocates nothing else per chunk), while tool calls, usage, the finish reason and thinking
text accumulate on the stream object. A stream that ends without the provider's terminator raises
:class:`~workers.llm.errors.IncompleteStreamError`; it is never a success. Closing the stream
(explicitly, via ``with``, or by the consumer stopping early) always closes the HTTP response;
a read that fails because the stream was closed from outside (a cancelled job) raises
:class:`~workers.llm.errors.JobCancelledError`, never a retryable error.

``finish_reason`` is normalized to OpenAI's vocabulary (``stop``, ``length``, ``tool_calls``,
``content_filter``) so that fallbacks across providers look alike; ``native_finish_reason``
keeps the provider's own value (Anthropic ``end_turn``, Ollama ``done_reason``).
"""

from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any, NoReturn, TypeVar
from typing import Protocol as _Protocol

from workers.contract import (
    Alternative,
    FunctionCall,
    Message,
    ReasoningBlock,
    RequestParams,
    TokenLogprob,
    Tool,
    ToolCall,
    TopLogprob,
    Usage,
)
from workers.llm.abort import AbortSignal
from workers.llm.errors import (
    BadRequestError,
    IncompleteStreamError,
    JobCancelledError,
    LLMQError,
    ResponseTooLargeError,
)

__all__ = [
    "ANSWER_FIELDS",
    "MAX_LINE_BYTES",
    "ChatRequest",
    "ChatStream",
    "Completion",
    "Provider",
    "ProviderFactory",
    "ResponseBody",
    "ResponseStream",
    "ToolCallAccumulator",
    "call_arguments",
    "check_completion",
    "decode_json",
    "iter_lines",
    "iter_sse",
    "new_call_id",
    "sse_continuation",
    "token_logprobs",
    "tool_names",
]


#: ``str`` -> JSON value, for the stream parsers' hot loops: they decode each line's UTF-8
#: themselves, which skips ``json.loads``'s pure-Python encoding sniffing of ``bytes`` (about a
#: quarter of the CPU per chunk); validation is the same (``ValueError`` on anything malformed).
decode_json: Callable[[str], Any] = json.JSONDecoder().decode


@dataclass(slots=True)
class ChatRequest:
    """One request, the same for every model of a fallback chain: the chain's wrappers pass it down,
    and a provider gets it with the model's own name beside it (``complete(model, request)``).

    ``params`` is the contract's :class:`~workers.contract.params.RequestParams`; on the worker, the
    job itself. A provider adapter reads the fields its API has from it (``request.params.top_p``)
    and translates them; nothing between the job and the adapter copies a parameter, and the
    capability table refused at submit what the provider cannot do.
    """

    messages: list[Message]
    params: RequestParams
    #: The tool definitions offered on this turn (the job's client tools, plus its worker tools'
    #: in a tool loop).
    tools: list[Tool] = field(default_factory=list)
    #: Opaque per-request headers for the upstream (the simulator's fault selector, tracing).
    headers: dict[str, str] = field(default_factory=dict)
    #: Lets a canceller end a whole-body call in flight (``workers/llm/abort.py``).
    abort: AbortSignal | None = None
    #: The pre-counted prompt tokens for the model being called (set by the metering wrapper).
    prompt_tokens: int | None = None
    #: OpenAI's ``service_tier`` (``flex``: slower, at the batch price), chosen by the worker for a
    #: ``batch: "auto"`` job whose deadline is too short for a batch (``workers/jobs/batched.py``).
    service_tier: str | None = None


@dataclass(slots=True)
class Completion:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    thinking: str = ""
    #: Thinking blocks to send back unchanged when the conversation continues (Anthropic).
    reasoning_blocks: list[ReasoningBlock] = field(default_factory=list)
    refusal: str | None = None
    response_model: str | None = None
    request_id: str | None = None
    #: The provider's id of the response (``chatcmpl-...``, ``msg_...``).
    response_id: str | None = None
    #: The provider's own finish/stop reason before normalization.
    native_finish_reason: str | None = None
    #: Rate-limit headers of the response, normalized (see ``errormap.parse_ratelimit``).
    ratelimit: dict[str, float] | None = None
    #: With ``logprobs``: the answer's tokens and their log probabilities.
    logprobs: list[TokenLogprob] | None = None
    #: With ``n`` > 1: the 2nd to the n-th answer.
    alternatives: list[Alternative] = field(default_factory=list)


#: What a stream accumulates besides its text (kept as ``text_parts``): every field of a
#: :class:`Completion` but ``text``. :meth:`ChatStream.to_completion` and a wrapper taking its inner
#: stream's answer (``WrappedStream.finish_from_inner``) go through this one list, so a field added
#: to ``Completion`` (and set in ``ChatStream.__init__``) travels up the chain without more code.
ANSWER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Completion) if f.name != "text")


class ResponseBody(_Protocol):
    """What a stream reads from: an open 2xx response (``httpclient.StreamingResponse``) or a fake."""

    headers: Mapping[str, str]

    def iter_bytes(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class ChatStream(ABC):
    """An open streaming response. Iterate for text deltas; read the rest afterwards."""

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.thinking: str = ""
        self.reasoning_blocks: list[ReasoningBlock] = []
        self.refusal: str | None = None
        self.response_model: str | None = None
        self.request_id: str | None = None
        self.response_id: str | None = None
        self.native_finish_reason: str | None = None
        self.ratelimit: dict[str, float] | None = None
        self.logprobs: list[TokenLogprob] | None = None
        #: With ``n`` > 1: the other answers, read after the first one's deltas (only the first streams).
        self.alternatives: list[Alternative] = []
        self.completed = False
        #: Set by :meth:`close` from outside the iteration (consumer gave up, job cancelled).
        self.closed = False

    @abstractmethod
    def __iter__(self) -> Iterator[str]: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def to_completion(self) -> Completion:
        return Completion(text=self.text, **{name: getattr(self, name) for name in ANSWER_FIELDS})

    def take_answer(self, other: ChatStream) -> None:
        """Take ``other``'s answer as this stream's (a wrapper, from the inner stream it read)."""
        self.text_parts = other.text_parts
        for name in ANSWER_FIELDS:
            setattr(self, name, getattr(other, name))

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ResponseStream(ChatStream):
    """A :class:`ChatStream` read from one HTTP response body; providers write ``__iter__``.

    Shared bookkeeping only, so each provider's hot loop stays a flat loop of its own: iterate
    once, turn failures caused by an outside :meth:`close` into :class:`JobCancelledError`, and
    refuse to call a stream without its terminator a success.
    """

    def __init__(self, response: ResponseBody, *, provider: str, model: str, request_id: str | None = None) -> None:
        super().__init__()
        self._response = response
        self._provider = provider
        self._model = model
        self._started = False
        self.request_id = request_id

    def close(self) -> None:
        self.closed = True
        self._response.close()

    def _begin(self) -> Iterator[bytes]:
        """The body's chunks; called once at the start of ``__iter__``."""
        if self._started:
            raise RuntimeError("a ChatStream can be iterated only once")
        self._started = True
        if self.closed:
            raise self._cancelled()
        return self._response.iter_bytes()

    def _raise_failed(self, exc: Exception) -> NoReturn:
        """Re-raise ``exc`` from the read loop, or what it stands for (see :meth:`_failed`)."""
        failed = self._failed(exc)
        if failed is exc:
            raise exc
        raise failed from exc

    def _failed(self, exc: Exception) -> Exception:
        """What to raise for ``exc`` from the read loop.

        A cancel wins over the read error it caused; a payload of an unexpected shape (the
        provider changed its wire format) is a broken stream, not a crash of the worker.
        """
        if isinstance(exc, ResponseTooLargeError) and exc.provider is None:
            return ResponseTooLargeError(exc.message, provider=self._provider, model=self._model)
        if isinstance(exc, LLMQError):
            in_stream = bool(exc.details and exc.details.get("in_stream"))
            return self._cancelled() if self.closed and not in_stream else exc
        if self.closed:
            return self._cancelled()
        if isinstance(exc, (AttributeError, IndexError, KeyError, TypeError, ValueError)):
            return IncompleteStreamError(
                f"unexpected stream payload ({type(exc).__name__}: {exc})", provider=self._provider, model=self._model
            )
        return exc

    @staticmethod
    def _drain(rest: Iterator[object], limit: int = 8) -> None:
        """Read what follows the terminator (normally just the end of the body, bounded).

        A response read to its end goes back to the connection pool on close; one closed early
        is discarded, so every job would pay a new TCP (and TLS) handshake.
        """
        for i, _ in enumerate(rest):
            if i >= limit:
                break

    def _finish(self, terminator: str) -> None:
        """After the read loop: anything but a seen terminator, or fields of the wrong type, is an error."""
        if not self.completed:
            if self.closed:
                raise self._cancelled()
            raise IncompleteStreamError(
                f"stream ended without {terminator}", provider=self._provider, model=self._model
            )
        try:
            check_completion(self)
        except TypeError as exc:
            self.completed = False
            raise IncompleteStreamError(
                f"malformed stream: {exc}", provider=self._provider, model=self._model
            ) from None

    def _cancelled(self) -> JobCancelledError:
        return JobCancelledError("the stream was closed while it was read", provider=self._provider, model=self._model)

    def _malformed(self, data: bytes) -> IncompleteStreamError:
        return IncompleteStreamError(
            f"malformed stream data: {data[:80]!r}", provider=self._provider, model=self._model
        )


_C = TypeVar("_C", Completion, ChatStream)


def check_completion(answer: _C) -> _C:
    """Raise ``TypeError`` when a parsed answer's fields have the wrong types (a JSON ``null``,
    number or list where text belongs): it would otherwise fail later, outside the provider,
    as an untyped crash while the result is stored."""
    text = answer.text
    if not isinstance(text, str) or not isinstance(answer.thinking, str):
        raise TypeError(f"content is {type(text).__name__}, not text")
    for name in ("finish_reason", "refusal", "response_model", "response_id", "native_finish_reason"):
        value = getattr(answer, name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} is {type(value).__name__}, not text")
    calls = answer.tool_calls
    if not isinstance(calls, list) or not all(isinstance(c, ToolCall) for c in calls):
        raise TypeError("tool_calls are not tool calls")
    if answer.usage is not None and not isinstance(answer.usage, Usage):
        raise TypeError("usage is not usage")
    return answer


class Provider(ABC):
    """One upstream API (OpenAI, Anthropic, Ollama, ...)."""

    #: The provider prefix in model ids, e.g. ``"openai"``.
    name: str
    #: Where requests go (a span's ``server.address``); None when there is no one URL to name.
    server_url: str | None = None

    @abstractmethod
    def complete(self, model: str, request: ChatRequest) -> Completion:
        """``request`` to ``model`` (the provider's own name for it), answered whole."""

    @abstractmethod
    def stream(self, model: str, request: ChatRequest) -> ChatStream:
        """``request`` to ``model``, streamed."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the provider holds (it does not own the shared HTTP client)."""

    @property
    def genai_name(self) -> str:
        """``gen_ai.provider.name`` of OpenTelemetry's GenAI conventions (spans and metric labels)."""
        return self.name


#: Builds a provider from the worker's environment; registered per provider name.
ProviderFactory = Callable[..., Provider]


def token_logprobs(entries: object) -> list[TokenLogprob]:
    """Token entries in OpenAI's shape (``{token, logprob, bytes, top_logprobs}``; OpenAI's
    ``logprobs.content``, Ollama's ``logprobs``) as the contract's."""
    return [
        TokenLogprob(
            token=t["token"],
            logprob=float(t["logprob"]),
            bytes=t.get("bytes"),
            top_logprobs=[
                TopLogprob(token=top["token"], logprob=float(top["logprob"]), bytes=top.get("bytes"))
                for top in t.get("top_logprobs") or ()
            ],
        )
        for t in entries or ()  # type: ignore[attr-defined]
    ]


def call_arguments(call: ToolCall, provider: str) -> dict[str, object]:
    """A tool call's arguments as the object the formats that take one want (Anthropic, Gemini,
    Bedrock, Ollama); not a JSON object: a bad request."""
    try:
        value = json.loads(call.function.arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BadRequestError(f"arguments of tool call {call.id!r} are not a JSON object", provider=provider)
    return value


def tool_names(messages: Iterable[Message]) -> dict[str, str]:
    """Call id -> tool name over a conversation, for formats that answer a call by its tool's name."""
    return {c.id: c.function.name for m in messages for c in m.tool_calls or []}


def new_call_id(prefix: str = "call_") -> str:
    """An id for a tool call its provider sent without one (Gemini, Ollama, some compatible servers).

    Unique within any conversation, as the providers' own ids are: results are matched to calls by
    id (Gemini's ``functionResponse`` names, Ollama's ``tool_name``), and Anthropic refuses a
    conversation that repeats a ``tool_use`` id, which a fallback hands it. A counter per answer
    (``call_0``) would repeat in every turn.
    """
    return prefix + secrets.token_hex(12)


class ToolCallAccumulator:
    """Assembles streamed tool-call fragments by index; arguments may arrive in many pieces."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def start(self, index: int, call_id: str | None, name: str | None) -> None:
        if index.__class__ is not int:
            raise TypeError("a tool call's index must be an integer")  # raised in the read loop: typed
        if not (call_id is None or call_id.__class__ is str) or not (name is None or name.__class__ is str):
            raise TypeError("a tool call's id and name must be text")
        slot = self._calls.get(index)
        if slot is None:
            self._calls[index] = [call_id or "", name or "", ""]
            return
        if call_id and not slot[0]:
            slot[0] = call_id
        if name and not slot[1]:
            slot[1] = name

    def add_arguments(self, index: int, fragment: str) -> None:
        if fragment.__class__ is not str or index.__class__ is not int:
            raise TypeError("tool call arguments must be text, at an integer index")
        slot = self._calls.get(index)
        if slot is None:
            slot = self._calls[index] = ["", "", ""]
        slot[2] += fragment

    def __bool__(self) -> bool:
        return bool(self._calls)

    def build(self, id_prefix: str = "call_") -> list[ToolCall]:
        calls = []
        for index in sorted(self._calls):
            call_id, name, args = self._calls[index]
            calls.append(
                ToolCall(
                    id=call_id or new_call_id(id_prefix),
                    function=FunctionCall(name=name or "unknown", arguments=normalize_arguments(args)),
                )
            )
        return calls


def normalize_arguments(raw: str | dict[str, object] | None) -> str:
    """Arguments as a JSON object string; an empty stream of fragments means ``{}``."""
    if raw is None:
        return "{}"
    if isinstance(raw, dict):
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)
    return raw if raw.strip() else "{}"


#: Longest stream line (or multi-line SSE event) accepted from an upstream: 1 MiB.
MAX_LINE_BYTES = 1 << 20


def _line_too_long(limit: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(f"a stream line passed {limit} bytes; attempt ended")


def iter_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Split a byte stream into lines (``\\n``-terminated; a trailing ``\\r`` is stripped).

    A final line without a newline is still yielded. A line longer than ``max_line`` bytes raises
    :class:`ResponseTooLargeError` as soon as that many bytes of it arrived: an upstream that never
    sends a newline cannot grow the worker's memory. The pieces of an unfinished line are kept in
    a list and joined once, so a line trickling in byte by byte costs linear time. Kept small:
    this is the innermost loop of every stream we read; the length checks cost nothing per line
    unless a chunk is itself near the limit.
    """
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        lines = chunk.split(b"\n")
        if len(lines) == 1:  # no newline: more of the line being read
            if chunk:
                held += len(chunk)
                if held > max_line:
                    raise _line_too_long(max_line)
                pending.append(chunk)
            continue
        if pending:
            pending.append(lines[0])
            lines[0] = b"".join(pending)
        tail = lines.pop()
        if held + len(chunk) > max_line and max(map(len, lines)) > max_line:
            raise _line_too_long(max_line)
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            yield line
        held = len(tail)
        if held > max_line:
            raise _line_too_long(max_line)
        pending = [tail] if tail else []
    if pending:
        buf = b"".join(pending)
        yield buf[:-1] if buf.endswith(b"\r") else buf


def iter_sse(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(event, data)`` pairs of a Server-Sent Events stream.

    Multi-line ``data:`` fields are joined with ``\\n`` as the spec says; comments and ids are
    skipped. An event still pending when the stream ends (no trailing blank line) is yielded.
    """
    event = b""
    data: list[bytes] = []
    for line in iter_lines(chunks):
        if not line:
            if data:
                yield event, data[0] if len(data) == 1 else b"\n".join(data)
            event = b""
            data = []
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            event = line[6:].strip()
        # ":" comments, "id:" and "retry:" carry nothing we use
    if data:
        yield event, data[0] if len(data) == 1 else b"\n".join(data)


def sse_continuation(first: bytes, lines: Iterator[bytes]) -> bytes:
    """The whole data of an SSE event whose ``data:`` field spans several lines.

    The stream parsers decode each ``data:`` line on its own (every provider sends one line per
    event); only when that fails do they call this to read the rest of the event from ``lines``
    and join the pieces with ``\n`` as the SSE spec says. Costs nothing on the common path.
    """
    parts = [first]
    size = len(first)
    for line in lines:
        if not line:
            break
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
            size += len(value)
            if size > MAX_LINE_BYTES:  # an event of endless data: lines: bounded like one line
                raise _line_too_long(MAX_LINE_BYTES)
    return b"\n".join(parts)
