"""The one scripted fake model for the tests (fakes over mocks): each call takes the next outcome.

An outcome is an exception (raised by the call), a list of deltas (streamed in order; an
exception in the list is raised at that point, after the deltas before it were handed out), or a
callable returning a ready-made :class:`~workers.llm.base.ChatStream`. The last outcome repeats.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.errors import JobCancelledError, LLMQError
from workers.llm.model import ChatModel

__all__ = ["ListStream", "Outcome", "ScriptedModel"]


class ListStream(ChatStream):
    """Yields its parts; waits ``delay`` s before the first unless closed (then fails as a real
    stream closed from outside does)."""

    def __init__(self, parts: list[str | LLMQError], delay: float = 0.0) -> None:
        super().__init__()
        self._parts = parts
        self._delay = delay
        self._gone = threading.Event()

    def __iter__(self) -> Iterator[str]:
        if self._delay and self._gone.wait(self._delay):
            raise JobCancelledError("the stream was closed while it was read")
        for part in self._parts:
            if isinstance(part, LLMQError):
                raise part
            self.text_parts.append(part)
            yield part
        self.completed = True
        self.finish_reason = "stop"

    def close(self) -> None:
        self.closed = True
        self._gone.set()


Outcome = LLMQError | list[str | LLMQError] | Callable[[], ChatStream]


class ScriptedModel(ChatModel):
    """``calls`` counts the calls; ``streams`` keeps every stream handed out, in order."""

    def __init__(self, model_id: str, outcomes: list[Outcome]) -> None:
        self.model_id = model_id
        self.outcomes = list(outcomes)
        self.calls = 0
        self.streams: list[ChatStream] = []

    def _next(self) -> ChatStream:
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, LLMQError):
            raise outcome
        stream = outcome() if callable(outcome) else ListStream(outcome)
        self.streams.append(stream)
        return stream

    def complete(self, request: ChatRequest) -> Completion:
        stream = self._next()
        text = "".join(stream)
        return Completion(text=text, finish_reason=stream.finish_reason)

    def stream(self, request: ChatRequest) -> ChatStream:
        return self._next()
