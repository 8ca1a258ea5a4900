"""The worker's tool loop end to end: real Redis, an in-process Celery worker, the simulator."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx2
import pytest

from producers import Client, InvalidJobError
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from producers.gateway.sse import SSEParser
from simulator.app import SimulatorThread
from tests.support import tools as T
from tests.support.tools import tools_worker_settings
from workers.contract import CompletionResult, StreamEvent
from workers.settings import Settings

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


pytestmark = pytest.mark.usefixtures("fresh_tools")


@pytest.fixture
def worker_settings(redis_url: str) -> Settings:
    return tools_worker_settings(redis_url, concurrency=4)


def _run(client: Client, **job: object) -> tuple[CompletionResult, list[StreamEvent]]:
    job.setdefault("messages", PROMPT)
    job.setdefault("max_tokens", 200)
    handle = client.submit(job)
    result = handle.result(timeout=60)
    return result, list(client.stream(handle.id, timeout=10))


def _sim_requests(sim: SimulatorThread, job_id: str) -> int:
    return sum(1 for r in sim.simulator.stats.records(job_id) if r)


@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "ollama:llama3.1"])
@pytest.mark.parametrize("stream", [True, False])
def test_tool_call_runs_once_and_its_result_reaches_the_model(
    worker: object, client: Client, simulator: SimulatorThread, model: str, stream: bool
) -> None:
    result, events = _run(client, model=f"{model}~tools", tools=["get_capital"], stream=stream)
    assert result.status == "succeeded", result.error
    assert T.CALLS["get_capital"] == 1
    assert result.turns == 2
    assert "[1] Paris" in result.content  # the simulator quotes the tool result it received
    assert [m.role for m in result.messages] == ["assistant", "tool", "assistant"]
    call = result.messages[0].tool_calls[0]
    assert call.function.name == "get_capital"
    assert result.messages[1].tool_call_id == call.id and result.messages[1].content == "Paris"
    assert {a.turn for a in result.attempts} == {1, 2}
    assert _sim_requests(simulator, result.id) == 2
    types = [e.type for e in events]
    assert types[0] == "start" and types[-1] == "done"
    assert types.index("tool_call") < types.index("tool_result")
    if stream:
        assert types.index("tool_result") < types.index("delta")
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    tool_call = next(e for e in events if e.type == "tool_call")
    tool_result = next(e for e in events if e.type == "tool_result")
    assert (tool_call.turn, tool_call.tool_call.function.name) == (1, "get_capital")
    assert (tool_result.turn, tool_result.call_id, tool_result.ok, tool_result.preview) == (1, call.id, True, "Paris")
    # usage and cost are the sums of both turns
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0


def test_invalid_arguments_are_not_executed_and_the_model_corrects_itself(worker: object, client: Client) -> None:
    result, events = _run(client, model="openai:gpt-4o-mini~badargs,tools", tools=["get_capital"])
    assert result.status == "succeeded", result.error
    assert result.turns == 3
    assert T.CALLS["get_capital"] == 1  # only the valid call ran
    results = [e for e in events if e.type == "tool_result"]
    assert [(e.turn, e.ok) for e in results] == [(1, False), (2, True)]
    assert "invalid arguments" in results[0].error and "country" in results[0].error
    assert "is not of type 'string'" in result.messages[1].content  # the validation message went back


def test_max_invalid_fails_the_job_with_tool_arguments(worker: object, client: Client) -> None:
    result, _ = _run(client, model="openai:gpt-4o-mini~badargs*", tools=["get_capital"])
    assert result.status == "failed"
    assert result.error.type == "tool_arguments"
    assert T.CALLS["get_capital"] == 0
    assert result.turns == 2


def test_timeout_is_an_error_result_and_the_job_goes_on(worker: object, client: Client) -> None:
    result, events = _run(client, model="openai:gpt-4o-mini~tools", tools=["sleepy"])
    assert result.status == "succeeded", result.error
    tool_result = next(e for e in events if e.type == "tool_result")
    assert not tool_result.ok and tool_result.error == "timed out after 1 s"
    assert "timed out" in result.content
    # the worker's slots are free: another job runs at once on the same worker
    again, _ = _run(client, model="openai:gpt-4o-mini", tools=[])
    assert again.status == "succeeded"


def test_handler_exception_is_an_error_result_with_the_key_scrubbed(
    worker: object, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result, events = _run(client, model="openai:gpt-4o-mini~tools", tools=["boom"])
    assert result.status == "succeeded", result.error
    tool_result = next(e for e in events if e.type == "tool_result")
    assert not tool_result.ok and tool_result.error.startswith("RuntimeError: kaboom")
    everything = result.model_dump_json() + "".join(e.model_dump_json() for e in events)
    assert T.LEAKED_KEY not in everything and "[redacted]" in everything
    assert T.LEAKED_KEY not in caplog.text


def test_a_tool_returning_a_provider_key_has_it_scrubbed(
    worker: object, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result, events = _run(client, model="openai:gpt-4o-mini~tools", tools=["leak_key"])
    assert result.status == "succeeded", result.error
    assert T.CALLS["leak_key"] == 1
    everything = result.model_dump_json() + "".join(e.model_dump_json() for e in events)
    assert T.LEAKED_KEY not in everything
    assert "the key is [redacted]" in result.messages[1].content
    assert T.LEAKED_KEY not in caplog.text  # nor in any log line of the worker, at any level


def test_max_turns_ends_the_job(worker: object, client: Client) -> None:
    result, _ = _run(client, model="openai:gpt-4o-mini~tools*", tools=["get_capital"], max_turns=3)
    assert result.status == "failed"
    assert result.error.type == "max_turns"
    assert result.turns == 3
    assert T.CALLS["get_capital"] == 2  # the third turn's calls are not run


def test_parallel_calls_run_concurrently(worker: object, client: Client) -> None:
    result, events = _run(client, model="openai:gpt-4o-mini~tools@2", tools=["rendezvous"])
    assert result.status == "succeeded", result.error
    assert T.CALLS["rendezvous"] == 2
    assert [e.ok for e in events if e.type == "tool_result"] == [True, True]  # each waited for the other
    assert "[1] met [2] met" in result.content


def test_a_sequential_tool_runs_alone(worker: object, client: Client) -> None:
    result, _ = _run(client, model="openai:gpt-4o-mini~tools@3", tools=["exclusive"])
    assert result.status == "succeeded", result.error
    assert T.CALLS["exclusive"] == 3
    assert T.ACTIVE["max"] == 1


def test_a_client_tool_call_ends_the_job_after_the_worker_calls(worker: object, client: Client) -> None:
    client_tool = {"type": "function", "function": {"name": "ask_user", "parameters": {"type": "object"}}}
    result, _ = _run(client, model="openai:gpt-4o-mini~tools@2", tools=[client_tool, "get_capital"])
    assert result.status == "succeeded", result.error
    assert result.finish_reason == "tool_calls"
    assert [c.function.name for c in result.tool_calls] == ["ask_user"]
    assert T.CALLS["get_capital"] == 1
    assert [m.role for m in result.messages] == ["assistant", "tool"]


def test_cancel_interrupts_a_running_tool(worker: object, client: Client) -> None:
    handle = client.submit({"model": "openai:gpt-4o-mini~tools", "messages": PROMPT, "tools": ["patient"]})
    for event in handle.stream(timeout=30):
        if event.type == "tool_call":
            break
    handle.cancel()
    result = handle.result(timeout=30)
    assert result.status == "cancelled"
    assert T.CALLS["patient"] == 1
    for _ in range(200):  # the handler saw its CancelToken set and stopped (a hang guard, not a timing)
        if T.CALLS["patient_cancelled"]:
            break
        time.sleep(0.05)
    assert T.CALLS["patient_cancelled"] == 1


def test_producer_refuses_a_tool_no_live_worker_has(worker: object, client: Client) -> None:
    with pytest.raises(InvalidJobError, match="no_such_tool"):
        client.submit({"model": "openai:gpt-4o-mini", "messages": PROMPT, "tools": ["get_capital", "no_such_tool"]})
    with pytest.raises(
        InvalidJobError,
        match=r"no live worker has registered 'get_capitol' \(did you mean 'get_capital'\?\)",
    ):
        client.submit({"model": "openai:gpt-4o-mini", "messages": PROMPT, "tools": ["get_capitol"]})
    assert not client.redis.keys("llmq:job:*")  # nothing was registered or enqueued


def test_a_batch_naming_a_tool_no_live_worker_has_is_refused_before_anything_runs(
    worker: object, client: Client, tmp_path: Path
) -> None:
    from producers.batch import BatchValidationError, run_batch

    lines = [
        {"custom_id": "fine", "model": "openai:gpt-4o-mini~tools", "prompt": "capital?", "tools": ["get_capital"]},
        {"custom_id": "typo", "model": "openai:gpt-4o-mini~tools", "prompt": "capital?", "tools": ["get_capitol"]},
    ]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(BatchValidationError) as refused:
        run_batch(source, out, client=client, handle_signals=False)
    [issue] = refused.value.report.issues
    assert (issue.line, issue.code, issue.param, issue.custom_id) == (2, "unknown_tool", "tools.0", "typo")
    assert "no live worker has registered 'get_capitol' (did you mean 'get_capital'?)" in issue.message
    assert T.CALLS["get_capital"] == 0 and not out.exists()


def test_the_gateway_streams_tool_events_and_refuses_unknown_tools(redis_url: str, worker: object) -> None:
    token = "tok-tools-5e1f0a9c3b7d"
    settings = GatewaySettings(redis_url=redis_url, tokens={token: "team-t"}, heartbeat_s=0.2)
    with (
        GatewayThread(create_gateway(settings)) as gw,
        httpx2.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"}, timeout=30) as http,
    ):
        job = {"model": "openai:gpt-4o-mini~tools", "messages": PROMPT}
        refused = http.post("/v1/jobs", json={**job, "tools": ["get_capital", "no_such_tool"]})
        assert refused.status_code == 400 and "no_such_tool" in refused.text
        accepted = http.post("/v1/jobs", json={**job, "tools": ["get_capital"]})
        assert accepted.status_code == 202, accepted.text
        parser, events = SSEParser(), []
        with http.stream("GET", f"/v1/jobs/{accepted.json()['id']}/events") as response:
            for chunk in response.iter_bytes():
                events += parser.feed(chunk)
        names = [name for _, name, _ in events]
        assert names.index("tool_call") < names.index("tool_result") < names.index("done") == len(names) - 1
        tool_result = json.loads(next(data for _, name, data in events if name == "tool_result"))
        assert (tool_result["name"], tool_result["ok"], tool_result["preview"]) == ("get_capital", True, "Paris")


def test_a_requeued_job_resumes_after_the_journaled_turn(
    worker: object, client: Client, simulator: SimulatorThread
) -> None:
    # turn 2 gets a 429 asking for 11 s (> max_inworker_wait_s 10): the job is re-queued, and runs again
    result, events = _run(client, model="openai:gpt-4o-mini~tools,429@11", tools=["get_capital"])
    assert result.status == "succeeded", result.error
    assert T.CALLS["get_capital"] == 1  # not run again
    assert result.turns == 2 and "[1] Paris" in result.content
    faults = [r["fault"] for r in simulator.simulator.stats.records(result.id)]
    assert faults.count("tools") == 1  # turn 1's model call was not repeated
    assert [(a.turn, a.status) for a in result.attempts] == [(1, "succeeded"), (2, "failed"), (2, "succeeded")]
    assert {e.run for e in events} == {1, 2}


def test_a_structured_answer_after_tool_turns_is_repaired_in_the_same_conversation(
    worker: object, client: Client, simulator: SimulatorThread
) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    result, events = _run(
        client,
        model="openai:gpt-4o-mini~tools,badjson",
        tools=["get_capital"],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    assert result.status == "succeeded", result.error
    assert result.repairs == 1 and isinstance(result.parsed, dict) and "capital" in result.parsed
    assert _sim_requests(simulator, result.id) == 3  # tool turn, invalid answer, repair
    # the repair turn continues the tool conversation: it holds the tool turn and the repair request
    prompts = [str(r["prompt"]) for r in simulator.simulator.stats.records(result.id)]
    assert "not valid for the required response format" in prompts[2]
    assert prompts[1] in prompts[2] or len(prompts[2]) > len(prompts[1])
    assert result.turns == 2 and result.usage.prompt_tokens > 0
    assert [e.type for e in events].count("repair") == 1
