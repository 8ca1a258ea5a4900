"""The worker's tool loop: model turn -> check each call -> run it -> tool messages -> next turn.

Runs when a job names worker tools (strings in ``tools``). Every model turn goes through the
whole chain (``workers/jobs/turn.py``: pre-count of the grown conversation, budget reservation and
settlement, rate limits, retry, fallback, streaming of its deltas). For each call of a turn:

* a name the job did not give the model -> an error result (``unknown tool``), not executed;
* arguments that are not JSON or fail the schema -> an error result with the validation messages,
  not executed; the tool's ``max_invalid``-th such call fails the job (``tool_arguments``);
* otherwise the handler runs with its timeout (calls of one turn concurrently, at most
  ``[tools] max_parallel`` at once; a ``sequential`` tool alone); a timeout or an exception is an
  error result (redacted, capped), never a crashed job.

Results go back as ``tool`` messages until the model answers without calls, or ``max_turns``
ends the job. A call of a *client* tool (an object in ``tools``) ends the job as without worker
tools (``finish_reason: tool_calls``), after the same turn's worker calls ran. Each answer and each
result is journaled (``workers/tools/journal.py``) before the loop moves on, so a redelivered job
resumes where its last run stopped and repeats neither a model call nor a tool run.

Every call this run decides on is observed once, with a bounded outcome (``ok``, ``error``,
``timeout``, ``invalid``, ``unknown``, ``cancelled``, ``interrupted``): an ``execute_tool {name}``
span, a child of the job span even though the handler runs on its own thread (the job's context
is captured on the job's thread and passed explicitly; the handler's thread runs inside the call's
span), ``ChainHooks.on_tool`` (``llm_tool_calls_total{tool,outcome}`` and a ``tool`` decision
log line). Arguments and results go on the span only with ``LLMQ_TRACE_CONTENT`` (redacted, capped).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from workers.contract import (
    FunctionCall,
    Message,
    ToolCall,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
    redact,
)
from workers.jobs.resources import JobResources
from workers.jobs.run import JobRun, ToolLoopState
from workers.jobs.turn import Turns
from workers.llm.abort import AbortSignal
from workers.llm.base import ChatRequest, Completion
from workers.llm.errors import (
    JobCancelledError,
    MaxTurnsError,
    RunFencedError,
    ToolArgumentsError,
    ToolInterruptedError,
    UnknownToolError,
)
from workers.llm.tracing import end_tool_span, start_tool_span
from workers.tools.execute import RunningCall, render_error, render_value, start
from workers.tools.journal import CallRecord, JournalState, ToolJournal, TurnRecord
from workers.tools.registry import ToolCancelledError, ToolSpec
from workers.tools.toolbox import Toolbox
from workers.tools.validate import check_arguments

__all__ = ["PREVIEW_CHARS", "ToolLoop"]

#: Characters of a result shown in its ``tool_result`` event.
PREVIEW_CHARS = 200
#: Seconds between checks of the cancel key while tools run (the cancel channel is immediate).
CANCEL_POLL_S = 1.0


@dataclass
class _Item:
    index: int
    call: ToolCall
    spec: ToolSpec
    args: dict[str, Any]


def _text(message: Message) -> str:
    """The text of an assistant message the loop journaled (always a string or nothing)."""
    return message.content if isinstance(message.content, str) else ""


def _history_call(call: ToolCall) -> ToolCall:
    """A call as it goes back to the provider: arguments that are not a JSON object become ``{}``
    (Anthropic and Ollama reject anything else; the error result tells the model what was wrong)."""
    try:
        ok = isinstance(json.loads(call.function.arguments or "{}"), dict)
    except ValueError:
        ok = False
    if ok:
        return call
    return ToolCall(id=call.id, function=FunctionCall(name=call.function.name, arguments="{}"))


def _history(message: Message) -> Message:
    if not message.tool_calls:
        return message
    return message.model_copy(update={"tool_calls": [_history_call(c) for c in message.tool_calls]})


class ToolLoop:
    """The loop of one run; :attr:`state` goes into the job's result however the loop ends."""

    def __init__(
        self,
        res: JobResources,
        run: JobRun,
        turns: Turns,
        request: ChatRequest,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.res = res
        self.run = run
        self.job = job = run.job
        self.turns = turns
        self.request = request
        self.clock = clock
        toolbox: Toolbox | None = res.tools
        registry = toolbox.registry if toolbox is not None else None
        missing = [n for n in job.worker_tools if registry is None or n not in registry]
        if toolbox is None or missing:
            raise UnknownToolError(
                f"tool(s) not registered on this worker: {', '.join(missing)} (LLMQ_TOOLS / [tools] modules)",
                code="unknown_tool",
            )
        self.toolbox = toolbox
        self.specs: dict[str, ToolSpec] = {n: spec for n in job.worker_tools if (spec := toolbox.registry.get(n))}
        self.client_names = {t.function.name for t in job.client_tools}
        self.definitions = [*job.client_tools, *(s.definition() for s in self.specs.values())]
        self.max_turns = job.max_turns or toolbox.config.max_turns
        self.journal = ToolJournal(
            res.redis, run.keys, run.token, ttl_s=res.settings.result_ttl_s, lease_ms=res.store.claim_lease_ms
        )
        self.state = ToolLoopState()
        self.invalid: Counter[str] = Counter()
        self.tracer = run.ctx.tracer
        self.hooks = run.ctx.hooks
        self.trace_content = res.settings.trace_content
        # built on the job's thread, inside the job span: tool spans parent on it from any thread
        self.parent = otel_context.get_current()
        self._cancel = threading.Event()
        self._wake: threading.Event | None = None

    # --- the loop -------------------------------------------------------------------------------

    def run_loop(self) -> Completion:
        journal = self.journal.load()
        self._restore(journal)
        conversation = self.state.conversation = list(self.request.messages)
        self.state.definitions = self.definitions
        turn = 0
        while True:
            turn += 1
            record = journal.answers.get(turn)
            completion: Completion | None = None
            if record is None:
                self._check_cancelled()
                record, completion = self._model_turn(turn, conversation)
            else:
                self.run.model_used = record.model_used or self.run.model_used
            self.state.turns = turn
            self.state.add_usage(record.usage)
            self.state.messages.append(record.message)
            conversation.append(_history(record.message))
            calls = record.message.tool_calls or []
            if not calls:
                return self._final(record, completion)
            worker_calls = [(i, c) for i, c in enumerate(calls) if c.function.name not in self.client_names]
            client_calls = [c for c in calls if c.function.name in self.client_names]
            if turn >= self.max_turns and not client_calls:
                raise MaxTurnsError(
                    f"the model still called tools after {self.max_turns} turns (max_turns)", code="max_turns"
                )
            results = self._run_calls(turn, worker_calls, journal)
            for index, call in worker_calls:
                tool_message = Message(role="tool", tool_call_id=call.id, content=results[index].content)
                self.state.messages.append(tool_message)
                conversation.append(tool_message)
            if client_calls:
                return Completion(
                    text=_text(record.message),
                    tool_calls=client_calls,
                    reasoning_blocks=list(record.message.reasoning_blocks or []),
                    finish_reason="tool_calls",
                    usage=self.state.usage.model_copy(),
                )

    def _restore(self, journal: JournalState) -> None:
        """Carry what earlier runs journaled: attempts, cost and invalid-call counts."""
        if not journal.answers:
            return
        ctx, meter = self.run.ctx, self.run.meter
        last = max(journal.answers)
        earlier = [a for t in sorted(journal.answers) for a in journal.answers[t].attempts]
        ctx.attempts[:] = [*earlier, *(a for a in ctx.attempts if a.turn is None or a.turn > last)]
        costs = [r.cost_usd for r in journal.answers.values() if r.cost_usd is not None]
        if meter is not None and costs:
            meter.cost_usd = sum((Decimal(str(c)) for c in costs), Decimal(0))
        for result in journal.results.values():
            if result.invalid:
                self.invalid[result.name] += 1

    def _model_turn(self, turn: int, conversation: list[Message]) -> tuple[TurnRecord, Completion]:
        run, ctx, meter = self.run, self.run.ctx, self.run.meter
        self.turns.begin_next()
        cost_before = meter.cost_usd if meter is not None else None
        first_attempt = len(ctx.attempts)
        request = dataclasses.replace(
            self.request,
            messages=list(conversation),
            tools=self.definitions,
            abort=AbortSignal() if self.request.abort is not None else None,
        )
        try:
            completion = self.turns.take(request)
        finally:
            for attempt in ctx.attempts[first_attempt:]:
                if attempt.turn is None:
                    attempt.turn = turn
        cost_after = meter.cost_usd if meter is not None else None
        cost = None if cost_after is None else cost_after - (cost_before or Decimal(0))
        calls = list(completion.tool_calls)
        message = Message(
            role="assistant",
            content=(completion.text or None) if calls else completion.text,
            tool_calls=calls or None,
            # Anthropic wants this turn's thinking blocks back, unchanged, before its tool results
            reasoning_blocks=list(completion.reasoning_blocks) or None,
        )
        record = TurnRecord(
            turn=turn,
            message=message,
            finish_reason=completion.finish_reason,
            usage=completion.usage or Usage(estimated=True),
            cost_usd=float(cost) if cost is not None else None,
            model_used=run.model_used,
            attempts=[a for a in ctx.attempts if a.turn == turn],
        )
        self.journal.answer(record)
        return record, completion

    def _final(self, record: TurnRecord, completion: Completion | None) -> Completion:
        usage = self.state.usage.model_copy()
        if completion is None:  # journaled by an earlier run that died before storing the result
            return Completion(text=_text(record.message), finish_reason=record.finish_reason, usage=usage)
        completion.usage = usage
        return completion

    # --- one turn's calls -------------------------------------------------------------------------

    def _run_calls(self, turn: int, calls: list[tuple[int, ToolCall]], journal: JournalState) -> dict[int, CallRecord]:
        out: dict[int, CallRecord] = {}
        new = [(i, c) for i, c in calls if (turn, i) not in journal.results]
        if new:
            self.run.publisher.emit_many(
                [ToolCallEvent(job_id=self.job.id, seq=0, turn=turn, tool_call=_redacted(c)) for _, c in new]
            )
        items: list[_Item] = []
        for index, call in calls:
            done = journal.results.get((turn, index))
            if done is not None:
                out[index] = done
                continue
            name = call.function.name
            spec = self.specs.get(name)
            if spec is None:
                known = ", ".join(sorted(self.specs)) or "none"
                out[index] = self._record(
                    turn, index, call, error=f"unknown tool {name!r}; the tools are {known}", outcome="unknown"
                )
                continue
            args, errors = check_arguments(spec, call.function.arguments)
            if args is None:
                out[index] = self._record(
                    turn, index, call, error="invalid arguments: " + "; ".join(errors), invalid=True, outcome="invalid"
                )
                self.invalid[name] += 1
                limit = self.toolbox.max_invalid(spec)
                if self.invalid[name] >= limit:
                    raise ToolArgumentsError(
                        f"tool {name!r} was called with invalid arguments {self.invalid[name]} times "
                        f"(max_invalid {limit}); the last: {'; '.join(errors)}"[:2000],
                        code="tool_arguments",
                    )
                continue
            if (turn, index) in journal.started and not spec.idempotent:
                interrupted = ToolInterruptedError(
                    f"call {call.id} of tool {name!r} (turn {turn}) was running when an earlier run of this job "
                    f"died; {name!r} is not idempotent, so it is not run again",
                    code="tool_interrupted",
                )
                self._observe(call, "interrupted", 0.0, error_type="tool_interrupted", message=interrupted.message)
                raise interrupted
            items.append(_Item(index, call, spec, args))
        for batch in self._batches(items):
            out.update(self._run_batch(turn, batch))
        return out

    def _batches(self, items: list[_Item]) -> Iterator[list[_Item]]:
        cap = self.toolbox.config.max_parallel
        batch: list[_Item] = []
        for item in items:
            if item.spec.sequential:
                if batch:
                    yield batch
                    batch = []
                yield [item]
                continue
            batch.append(item)
            if len(batch) >= cap:
                yield batch
                batch = []
        if batch:
            yield batch

    def _run_batch(self, turn: int, batch: list[_Item]) -> dict[int, CallRecord]:
        self.journal.started(turn, [item.index for item in batch])
        wake = self._wake = threading.Event()
        clock = self.clock
        running: dict[int, tuple[_Item, RunningCall]] = {}
        spans: dict[int, Span] = {}
        for item in batch:
            timeout = self.toolbox.timeout_s(item.spec)
            span = spans[item.index] = start_tool_span(
                self.tracer, item.spec.name, call_id=item.call.id, parent=self.parent
            )
            handler_context = trace.set_span_in_context(span, self.parent)
            running[item.index] = (
                item,
                start(item.spec, item.args, timeout_s=timeout, wake=wake, clock=clock, context=handler_context),
            )
        watcher = self.res.cancel_watcher
        if watcher is not None:
            watcher.register(self.job.id, self._on_cancel)
        self.run.abort = self._on_cancel  # the claim heartbeat fires it when the job moved away
        own_beat = self.res.heartbeat is None  # else the process's claim heartbeat renews the lease
        beat_s = max(0.05, self.res.store.claim_lease_ms / 3000.0)
        next_beat = clock() + beat_s
        next_poll = clock() + CANCEL_POLL_S
        out: dict[int, CallRecord] = {}
        try:
            while running:
                wake.clear()
                for index in [i for i, (_, rc) in running.items() if rc.done]:
                    item, rc = running.pop(index)
                    out[index] = self._finished(turn, item, rc, spans.pop(index))
                now = clock()
                for index in [i for i, (_, rc) in running.items() if now >= rc.deadline]:
                    item, rc = running.pop(index)
                    rc.token.cancel("timeout")
                    error = f"timed out after {rc.timeout_s:g} s"
                    out[index] = self._record(
                        turn,
                        index,
                        item.call,
                        error=error,
                        duration_s=now - rc.started,
                        outcome="timeout",
                        span=spans.pop(index),
                    )
                if not running:
                    break
                if now >= next_poll:
                    next_poll = now + CANCEL_POLL_S
                    if self.res.store.is_cancelled(self.run.keys):
                        self._cancel.set()
                if self.run.ctx.fenced:
                    for _, rc in running.values():
                        rc.token.cancel("the job moved to another run")
                    raise RunFencedError("the job moved to another run while its tools ran")
                if self._cancel.is_set() or self.run.publisher.cancelled:
                    for _, rc in running.values():
                        rc.token.cancel("the job was cancelled")
                    names = ", ".join(sorted({item.spec.name for item, _ in running.values()}))
                    raise JobCancelledError(f"cancelled while tools ran ({names})")
                if own_beat and now >= next_beat:
                    self.journal.heartbeat()
                    next_beat = now + beat_s
                soonest = min(rc.deadline for _, rc in running.values())
                wake.wait(max(0.0, min(soonest, next_beat, next_poll) - now))
        except BaseException as exc:
            # calls left running when the job stops waiting for them (cancelled, fenced, handed back,
            # or the loop's own failure): their spans end and they are counted, once
            outcome = "cancelled" if isinstance(exc, JobCancelledError) else "interrupted"
            now = clock()
            for index, (item, rc) in running.items():
                left = spans.pop(index, None)
                self._observe(
                    item.call,
                    outcome,
                    now - rc.started,
                    error_type=type(exc).__name__,
                    message=str(exc),
                    span=left,
                )
            raise
        finally:
            self._wake = None
            self.run.abort = None
            if watcher is not None:
                watcher.unregister(self.job.id)
        return out

    def _on_cancel(self) -> None:
        self._cancel.set()
        wake = self._wake
        if wake is not None:
            wake.set()

    def _finished(self, turn: int, item: _Item, rc: RunningCall, span: Span) -> CallRecord:
        duration = self.clock() - rc.started
        if rc.error is not None:
            if isinstance(rc.error, ToolCancelledError):
                error = f"cancelled: {rc.error}" if str(rc.error) else "cancelled"
                outcome = "cancelled"
            else:
                error = render_error(rc.error)
                outcome = "error"
            return self._record(
                turn,
                item.index,
                item.call,
                error=error,
                duration_s=duration,
                outcome=outcome,
                error_type=type(rc.error).__name__,
                span=span,
            )
        try:
            content = render_value(rc.value, self.toolbox.config.max_result_bytes)
        except Exception as exc:  # a value that cannot be rendered is the tool's error, not ours
            return self._record(
                turn,
                item.index,
                item.call,
                error=render_error(exc),
                duration_s=duration,
                outcome="error",
                error_type=type(exc).__name__,
                span=span,
            )
        return self._record(turn, item.index, item.call, content=content, duration_s=duration, span=span)

    def _record(
        self,
        turn: int,
        index: int,
        call: ToolCall,
        *,
        content: str | None = None,
        error: str | None = None,
        invalid: bool = False,
        duration_s: float = 0.0,
        outcome: str = "ok",
        error_type: str | None = None,
        span: Span | None = None,
    ) -> CallRecord:
        """Journal one call's outcome, publish its ``tool_result`` event, then observe it
        (:meth:`_observe`; a call that never ran gets a span of its own here)."""
        ok = error is None
        text = content if ok and content is not None else f"error: {error}"
        record = CallRecord(
            turn=turn,
            index=index,
            call_id=call.id,
            name=call.function.name,
            ok=ok,
            content=text,
            error=error,
            invalid=invalid,
            duration_s=round(max(0.0, duration_s), 4),
        )
        self.journal.result(record)
        self.run.publisher.emit(
            ToolResultEvent(
                job_id=self.job.id,
                seq=0,
                turn=turn,
                call_id=call.id,
                name=call.function.name,
                ok=ok,
                error=error,
                preview=text[:PREVIEW_CHARS],
                duration_s=record.duration_s,
            )
        )
        self._observe(
            call,
            outcome,
            record.duration_s,
            error_type=None if ok else (error_type or _ERROR_TYPES.get(outcome, outcome)),
            message=error,
            result=text,
            span=span,
        )
        return record

    def _observe(
        self,
        call: ToolCall,
        outcome: str,
        seconds: float,
        *,
        error_type: str | None = None,
        message: str | None = None,
        result: str | None = None,
        span: Span | None = None,
    ) -> None:
        """End the call's ``execute_tool`` span (started now for a call that did not run) and
        report it to the chain hooks (metrics, decision log line)."""
        name = call.function.name
        if span is None:
            span = start_tool_span(self.tracer, name, call_id=call.id, parent=self.parent)
        content = self.trace_content
        end_tool_span(
            span,
            outcome,
            error_type=error_type,
            message=message,
            arguments=call.function.arguments if content else None,
            result=result if content else None,
        )
        self.hooks.on_tool(name, outcome, max(0.0, seconds))

    def _check_cancelled(self) -> None:
        # no Redis call: the last flush (each tool result's event) reported the cancel key, and the
        # cancel channel sets ``_cancel`` at once
        if self._cancel.is_set() or self.run.publisher.cancelled:
            raise JobCancelledError("cancelled between tool-loop turns")


#: ``error.type`` of a failed call whose outcome has no exception class behind it.
_ERROR_TYPES = {"unknown": "unknown_tool", "invalid": "invalid_arguments", "timeout": "timeout"}


def _redacted(call: ToolCall) -> ToolCall:
    return ToolCall(
        id=call.id, function=FunctionCall(name=call.function.name, arguments=redact(call.function.arguments))
    )
