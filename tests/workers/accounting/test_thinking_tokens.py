"""Thinking tokens are counted (``usage.reasoning_tokens``) and priced as output, by the meter."""

from __future__ import annotations

from decimal import Decimal

from workers.accounting.metered import Meter, MeteredModel
from workers.accounting.prices import PriceBook
from workers.accounting.tokens import TokenCounter
from workers.contract import Alternative, CompletionJob, RequestParams, Usage
from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.model import ChatModel, RunContext

THOUGHT = "Let me think about the queue, the ledger and the budget before I answer. " * 20


class Answering(ChatModel):
    """A model that answers one fixed completion (a fake upstream)."""

    def __init__(self, model_id: str, completion: Completion) -> None:
        self.model_id = model_id
        self.completion = completion

    def complete(self, request: ChatRequest) -> Completion:
        return self.completion

    def stream(self, request: ChatRequest) -> ChatStream:  # pragma: no cover - not used here
        raise NotImplementedError


def _metered(model_id: str, completion: Completion) -> tuple[MeteredModel, Meter]:
    reasoning = {"effort": "high"} if model_id.startswith("openai:") else {"budget_tokens": 2048}
    job = CompletionJob(
        model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=8000, reasoning=reasoning
    )
    meter = Meter(job, TokenCounter(), PriceBook(), None, RunContext())
    return MeteredModel(Answering(model_id, completion), meter), meter


def test_anthropic_thinking_is_counted_from_its_text_and_priced_as_output() -> None:
    # Anthropic's output_tokens already include the thinking; it reports no separate count
    reported = Usage(prompt_tokens=10, completion_tokens=400)
    model, meter = _metered("anthropic:claude-sonnet-4-5", Completion(text="ok", thinking=THOUGHT, usage=reported))
    completion = model.complete(ChatRequest(messages=meter.job.messages or [], params=RequestParams(max_tokens=8000)))
    assert completion.usage is not None
    assert 0 < completion.usage.reasoning_tokens <= completion.usage.completion_tokens == 400
    price = PriceBook().lookup("anthropic:claude-sonnet-4-5")
    assert meter.cost_usd == price.cost(Usage(prompt_tokens=10, completion_tokens=400))


def test_without_reported_usage_the_thinking_is_added_to_the_estimate() -> None:
    model, meter = _metered("anthropic:claude-sonnet-4-5", Completion(text="ok", thinking=THOUGHT))
    completion = model.complete(ChatRequest(messages=meter.job.messages or [], params=RequestParams(max_tokens=8000)))
    usage = completion.usage
    assert usage is not None and usage.estimated
    thought = TokenCounter().count_text("anthropic:claude-sonnet-4-5", THOUGHT).tokens
    assert usage.reasoning_tokens == thought and usage.completion_tokens > thought
    assert meter.cost_usd is not None and meter.cost_usd > Decimal(0)


def test_openai_reports_its_own_reasoning_tokens() -> None:
    reported = Usage(prompt_tokens=10, completion_tokens=300, reasoning_tokens=256)
    job_model = "openai:o4-mini"
    model, meter = _metered(job_model, Completion(text="ok", usage=reported))
    meter.job = CompletionJob(
        model=job_model, messages=[{"role": "user", "content": "hi"}], reasoning={"effort": "high"}
    )
    completion = model.complete(ChatRequest(messages=meter.job.messages or [], params=RequestParams(max_tokens=1000)))
    assert completion.usage is not None and completion.usage.reasoning_tokens == 256


def test_without_reported_usage_every_answer_of_n_is_estimated() -> None:
    """``n`` > 1 from a server that reports no usage: the estimate counts the other answers too
    (they were generated and billed), not only the first."""
    answer = "The queue keeps every job until a worker ends it. " * 10
    others = [Alternative(index=i, content=answer, finish_reason="stop") for i in (1, 2)]
    one, _ = _metered("openai:gpt-4o", Completion(text=answer))
    three, meter = _metered("openai:gpt-4o", Completion(text=answer, alternatives=others))
    request = ChatRequest(messages=meter.job.messages or [], params=RequestParams(max_tokens=8000, n=3))
    single = one.complete(request).usage
    usage = three.complete(request).usage
    assert single is not None and usage is not None and usage.estimated
    # (counted as one text: a token may span where two answers meet)
    assert 3 * single.completion_tokens - 2 <= usage.completion_tokens <= 3 * single.completion_tokens
