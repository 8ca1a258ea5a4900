"""Turns: an ended call's abort hook goes with the call, and nothing of the call outlives it through it."""

from __future__ import annotations

import time
import weakref

import pytest
import redis

from tests.support.scripted import ListStream
from workers.contract import CompletionJob, JobKeys, Message
from workers.jobs.events import EventPublisher
from workers.jobs.run import JobRun
from workers.jobs.store import JobStore
from workers.jobs.turn import Turns
from workers.llm.abort import AbortSignal
from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.errors import JobCancelledError
from workers.llm.model import ChatModel, RunContext
from workers.runtime.resources import CancelWatcher


class CallObject:
    """Something only the call holds (a response, a reader)."""

    def close(self) -> None:
        pass


class OneCallModel(ChatModel):
    """Streams two deltas; a whole-body call arms the request's abort signal while it runs, as the
    HTTP layer does. Keeps only weak references to what it made."""

    model_id = "openai:gpt-4o-mini"

    def __init__(self, delay: float = 0.0) -> None:
        self.made: list[weakref.ref[object]] = []
        self.delay = delay  # before the first delta, unless closed (then it fails as a closed stream)

    def stream(self, request: ChatRequest) -> ChatStream:
        stream = ListStream(["a", "b"], delay=self.delay)
        self.made.append(weakref.ref(stream))
        return stream

    def complete(self, request: ChatRequest) -> Completion:
        reader = CallObject()
        self.made.append(weakref.ref(reader))
        assert request.abort is not None and request.abort.arm(reader.close)
        try:
            return Completion(text="ab", finish_reason="stop")
        finally:
            request.abort.disarm()


def _turns(run: JobRun, model: OneCallModel, client: redis.Redis, watcher: CancelWatcher) -> Turns:
    return Turns(
        run,
        model,
        store=JobStore(client, result_ttl_s=60, claim_lease_s=30),
        cancel_watcher=watcher,
        clock=time.monotonic,
    )


@pytest.mark.parametrize("stream", [True, False])
def test_an_ended_calls_objects_are_freed_when_it_ends_not_with_the_job(
    redis_client: redis.Redis, no_cyclic_gc: None, stream: bool
) -> None:
    job = CompletionJob(model="openai:gpt-4o-mini", stream=stream, messages=[Message(role="user", content="hi")])
    keys = JobKeys(job.id)
    publisher = EventPublisher(redis_client, keys, run=1, start_seq=0)
    run = JobRun(job, keys, publisher, RunContext(), started=time.monotonic())
    watcher = CancelWatcher(redis_client)  # not started: its hooks only
    model = OneCallModel()
    turns = _turns(run, model, redis_client, watcher)
    request = ChatRequest(messages=job.messages, params=job, abort=None if stream else AbortSignal())

    for _ in range(2):  # two turns (a tool loop's, a repair's): each call's objects go as it ends
        completion = turns.take(request)
        assert completion.text == "ab"
        assert len(model.made) == 1 and model.made.pop()() is None
    assert run.text_parts == (["a", "b", "a", "b"] if stream else [])
    if stream:  # the stream's hook is gone; a cancel heard now is kept for the next call's hook
        assert run.abort is None and job.id not in watcher._hooks
    else:  # the signal stays (a later call is refused once it fired), holding nothing of the call
        assert run.abort == request.abort.fire and watcher._hooks[job.id] == request.abort.fire


def test_a_cancel_heard_between_streamed_calls_stops_the_next_one_at_once(redis_client: redis.Redis) -> None:
    job = CompletionJob(model="openai:gpt-4o-mini", messages=[Message(role="user", content="hi")])
    keys = JobKeys(job.id)
    run = JobRun(job, keys, EventPublisher(redis_client, keys, run=1, start_seq=0), RunContext(), started=0.0)
    watcher = CancelWatcher(redis_client)
    model = OneCallModel(delay=0.01)
    turns = _turns(run, model, redis_client, watcher)
    request = ChatRequest(messages=job.messages, params=job)
    assert turns.take(request).text == "ab"
    watcher._fire(job.id.encode())  # as its listener does when the job's cancel is published
    model.delay = 5.0
    turns.begin_next()
    with pytest.raises(JobCancelledError):
        turns.take(request)  # its hook registered: the cancel heard before closes it at once
    assert run.text_parts == ["a", "b"]
