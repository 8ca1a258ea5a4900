"""Batch lines -> jobs, output records, resumable files, id sets and progress (no Redis)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from producers.batch import default_errors_path, job_id_for, validate_file
from producers.batch.files import BatchFileError, IdSet, JsonlAppender, iter_lines, read_outputs
from producers.batch.formats import LineError, parse_line
from producers.batch.progress import BatchCounters, BatchProgress
from producers.batch.records import invalid_record, result_record
from tests.support.conformance_cases import CONFORMANCE
from tests.support.doubles import FakeClock
from workers.contract import Attempt, CompletionJob, CompletionResult, ErrorInfo, ToolCall, Usage
from workers.contract.catalog import ModelCatalog

BATCH = CONFORMANCE / "batch"
needs_conformance = pytest.mark.skipif(not BATCH.exists(), reason="conformance files not available")

OPENAI_LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64},
}


def issues_of(line: dict[str, Any] | str, **kwargs: Any) -> list[tuple[str, str | None]]:
    raw = line if isinstance(line, str) else json.dumps(line)
    with pytest.raises(LineError) as info:
        parse_line(raw, 7, **kwargs)
    assert all(i.line == 7 for i in info.value.issues)
    return [(i.code, i.param) for i in info.value.issues]


# --- formats --------------------------------------------------------------------------------------


@needs_conformance
def test_real_openai_batch_input_files_parse() -> None:
    expected = json.loads((BATCH / "openai_batch.expected.json").read_text())["openai_batch_input_01.jsonl"]
    parsed = [parse_line(raw, n) for n, raw in iter_lines(BATCH / "openai_batch_input_01.jsonl")]
    assert [p.custom_id for p in parsed] == expected["custom_ids"]  # the trailing blank line is skipped
    assert all(p.kind == "openai" and p.job.model == "gpt-4o-mini" for p in parsed)
    assert ModelCatalog().resolve(parsed[0].job.model) == ["openai:gpt-4o-mini"]  # the one rule, at run time
    assert parsed[0].job.max_tokens == 10 and [m.role for m in parsed[0].job.messages or []] == ["system", "user"]
    spec = [parse_line(raw, n) for n, raw in iter_lines(BATCH / "openai_batch_input_02_spec_example.jsonl")]
    assert spec[0].job.max_tokens == CompletionJob.model_fields["max_tokens"].default


@needs_conformance
def test_real_anthropic_request_entries_parse() -> None:
    body = json.loads((BATCH / "anthropic_batch_create_request.json").read_text())
    parsed = [parse_line(json.dumps(r), i) for i, r in enumerate(body["requests"], 1)]
    assert [p.custom_id for p in parsed] == ["my-first-request", "my-second-request"]
    job = parsed[0].job
    assert parsed[0].kind == "anthropic" and job.model == "claude-3-5-sonnet-20240620"
    assert ModelCatalog().resolve(job.model) == ["anthropic:claude-3-5-sonnet-20240620"]
    assert job.max_tokens == 1024 and job.messages is not None and job.messages[0].content == "Hello, world"
    assert job.metadata == {"custom_id": "my-first-request"}


def test_three_formats_give_the_same_job() -> None:
    anthropic = {
        "custom_id": "a",
        "params": {"model": "gpt-4o-mini", "max_tokens": 64, "messages": OPENAI_LINE["body"]["messages"]},
    }
    plain = {"custom_id": "a", "prompt": "Hi", "max_tokens": 64}
    jobs = [
        parse_line(json.dumps(OPENAI_LINE), 1).job,
        parse_line(json.dumps(anthropic), 1, default_model="x").job,
        parse_line(json.dumps(plain), 1, default_model="openai:gpt-4o-mini").job,
    ]
    dumps = [j.model_dump(exclude={"id", "model"}) for j in jobs]
    assert dumps[0] == dumps[1] == dumps[2]
    # a bare name means the same in every format (and everywhere else): no per-format provider
    assert [j.model for j in jobs] == ["gpt-4o-mini", "gpt-4o-mini", "openai:gpt-4o-mini"]


def test_model_rules() -> None:
    body = OPENAI_LINE["body"]
    with_fault = {**OPENAI_LINE, "body": {**body, "model": "gpt-4o-mini~401*"}}
    assert parse_line(json.dumps(with_fault), 1).job.model == "gpt-4o-mini~401*"
    explicit = {**OPENAI_LINE, "body": {**body, "model": "anthropic:claude-x"}}
    assert parse_line(json.dumps(explicit), 1).job.model == "anthropic:claude-x"
    no_model = {**OPENAI_LINE, "body": {"messages": body["messages"]}}
    assert parse_line(json.dumps(no_model), 1, default_model="cheap").job.model == "cheap"
    assert issues_of(no_model) == [("missing_model", "body.model")]
    # --model only fills in: it never replaces a line's own model
    assert parse_line(json.dumps(OPENAI_LINE), 1, default_model="cheap").job.model == "gpt-4o-mini"


def test_openai_content_parts_developer_role_and_strict_tools() -> None:
    tool = {"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object"}}}
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    line = {
        **OPENAI_LINE,
        "body": {"model": "gpt-4o", "messages": messages, "tools": [tool], "max_completion_tokens": 9},
    }
    job = parse_line(json.dumps(line), 1).job
    assert [(m.role, m.content) for m in job.messages or []] == [("system", "be brief"), ("user", "ab")]
    assert job.tools[0].function.name == "f" and job.max_tokens == 9


def test_anthropic_blocks_tools_and_results_become_openai_messages() -> None:
    params = {
        "model": "claude-x",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "sys"}],
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {}}}],
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]},
                    {"type": "text", "text": "go on"},
                ],
            },
        ],
    }
    job = parse_line(json.dumps({"custom_id": "a", "params": params}), 1).job
    roles = [(m.role, m.content, m.tool_call_id) for m in job.messages or []]
    assert roles == [
        ("system", "sys", None),
        ("user", "q", None),
        ("assistant", None, None),
        ("tool", "42", "t1"),
        ("user", "go on", None),
    ]
    call = (job.messages or [])[2].tool_calls[0]  # type: ignore[index]
    assert call.id == "t1" and json.loads(call.function.arguments) == {"a": 1}
    assert job.tools[0].function.parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", [("invalid_json", None)]),
        ("[1, 2]", [("invalid_json", None)]),
        ({k: v for k, v in OPENAI_LINE.items() if k != "custom_id"}, [("missing_custom_id", "custom_id")]),
        ({**OPENAI_LINE, "custom_id": 5}, [("invalid_custom_id", "custom_id")]),
        ({**OPENAI_LINE, "url": "/v1/embeddings"}, [("invalid_url", "url")]),
        ({**OPENAI_LINE, "method": "GET"}, [("invalid_method", "method")]),
        ({**OPENAI_LINE, "body": {**OPENAI_LINE["body"], "audio": {}}}, [("unsupported_field", "body.audio")]),
        ({**OPENAI_LINE, "body": {**OPENAI_LINE["body"], "n": 0}}, [("invalid_value", "body.n")]),
        ({**OPENAI_LINE, "body": {**OPENAI_LINE["body"], "max_tokens": 0}}, [("invalid_value", "body.max_tokens")]),
        (
            {**OPENAI_LINE, "body": {**OPENAI_LINE["body"], "messages": [{"role": "user", "content": 5}]}},
            [("invalid_value", "body.messages[0].content")],
        ),
        (
            {**OPENAI_LINE, "body": {**OPENAI_LINE["body"], "messages": [{"role": "robot", "content": "x"}]}},
            [("invalid_value", "body.messages[0].role")],
        ),
        (
            {
                "custom_id": "a",
                "params": {"model": "m", "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            },
            [("unsupported_content", "params.messages[0].content[0]")],
        ),
        (
            {
                "custom_id": "a",
                "params": {"model": "m", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]},
            },
            [("invalid_value", "params.max_tokens")],
        ),
        ({"custom_id": "a", "prompt": "x", "model": "not a model"}, [("invalid_value", "model")]),
        ({"custom_id": "a", "prompt": ""}, [("invalid_prompt", "prompt")]),
        (
            {"custom_id": "a", "prompt": "x", "model": "m", "metadata": {"api_key": "k"}},
            [("invalid_value", "metadata")],
        ),
        ({"custom_id": "a", "hello": 1}, [("unknown_format", None)]),
    ],
)
def test_malformed_lines_name_the_field(line: Any, expected: list[tuple[str, str | None]]) -> None:
    assert issues_of(line, default_model="openai:gpt-4o-mini") == expected


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ({**OPENAI_LINE, "body": {**OPENAI_LINE["body"], "max_token": 5}}, "(did you mean body.max_tokens?)"),
        ({"custom_id": "a", "promt": "x"}, "(did you mean 'prompt'?)"),
        ({"custom_id": "a", "prams": {"model": "m"}}, "(did you mean 'params'?)"),
    ],
)
def test_a_misspelt_field_of_a_line_names_the_field_meant(line: dict[str, Any], says: str) -> None:
    with pytest.raises(LineError) as info:
        parse_line(json.dumps(line), 7, default_model="openai:gpt-4o-mini")
    [issue] = info.value.issues
    assert says in issue.message, issue.message


def test_validate_file_reports_line_numbers_and_duplicates(tmp_path: Path) -> None:
    lines = [
        json.dumps(OPENAI_LINE),
        "",
        "{bad json",
        json.dumps({**OPENAI_LINE, "custom_id": "b", "url": "/v1/completions"}),
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": OPENAI_LINE["body"]}),
        json.dumps({"custom_id": "c", "prompt": "x"}),
        json.dumps({**OPENAI_LINE}),
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = validate_file(path, model="openai:gpt-4o-mini")
    assert (report.lines, report.valid, report.invalid_count) == (6, 2, 4)
    assert report.invalid_lines == {3, 4, 5, 7}
    found = [(i.line, i.code, i.param) for i in report.issues]
    assert found == [
        (3, "invalid_json", None),
        (4, "invalid_url", "url"),
        (5, "missing_custom_id", "custom_id"),
        (7, "duplicate_custom_id", "custom_id"),
    ]
    assert "first on line 1" in str(report.issues[-1])
    done = IdSet()
    done.add("a")
    assert validate_file(path, model="openai:gpt-4o-mini", done=done).todo == 1


# --- output records -------------------------------------------------------------------------------


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return None if value is None else "value"


def _result(**kwargs: Any) -> CompletionResult:
    base: dict[str, Any] = {
        "id": "b-123-request-1",
        "status": "succeeded",
        "content": "Hello!",
        "finish_reason": "stop",
        "usage": Usage(prompt_tokens=20, completion_tokens=10),
        "model_used": "openai:gpt-4o-mini",
        "attempts": [Attempt(model="openai:gpt-4o-mini", status="succeeded")],
        "cost_usd": 0.0012,
    }
    return CompletionResult(**(base | kwargs))


@needs_conformance
def test_success_record_has_the_shape_of_a_real_openai_output_line() -> None:
    real = json.loads((BATCH / "openai_batch_output_01.jsonl").read_text().splitlines()[0])
    ok, ours = result_record(_result(), "request-1", line=1)
    assert ok and ours["custom_id"] == "request-1" and ours["error"] is None
    extra = ours.pop("x_llmqueue")
    assert extra == {
        "job_id": "b-123-request-1",
        "line": 1,
        "status": "succeeded",
        "model_used": "openai:gpt-4o-mini",
        "attempts": [{"model": "openai:gpt-4o-mini", "status": "succeeded", "wait_s": 0.0}],
        "cost_usd": 0.0012,
        "usage_estimated": False,
    }
    body, real_body = ours["response"]["body"], real["response"]["body"]
    assert set(ours) == set(real) and set(ours["response"]) == set(real["response"])
    assert set(body) == set(real_body) and set(body["choices"][0]) == set(real_body["choices"][0])
    assert body["usage"] == {
        "prompt_tokens": 20,
        "completion_tokens": 10,
        "total_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert set(body["usage"]) <= set(real_body["usage"])
    assert set(body["usage"]["prompt_tokens_details"]) <= set(real_body["usage"]["prompt_tokens_details"])
    assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello!", "refusal": None}


def test_tool_call_answer_has_null_content_and_tool_calls() -> None:
    call = ToolCall.model_validate({"id": "c1", "function": {"name": "f", "arguments": "{}"}})
    _, record = result_record(_result(content="", tool_calls=[call], finish_reason="tool_calls"), "x")
    message = record["response"]["body"]["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "f"


@needs_conformance
def test_error_records_have_the_shapes_of_real_openai_error_lines() -> None:
    real = [json.loads(line) for line in (BATCH / "openai_batch_output_02_mixed.jsonl").read_text().splitlines()]
    http_real, batch_real = real[1], real[2]
    info = ErrorInfo(type="authentication_error", message="bad key", code="invalid_api_key", status=401)
    http_real["response"]["body"]["error"]["param"] = None  # we never know the offending param
    ok, http = result_record(_result(status="failed", content="", error=info, model_used=None), "r")
    assert not ok and _shape({k: v for k, v in http.items() if k != "x_llmqueue"}) == _shape(http_real)
    assert http["response"]["status_code"] == 401 and http["response"]["body"]["error"]["code"] == "invalid_api_key"
    assert http["x_llmqueue"]["error"]["type"] == "authentication_error"
    timeout = ErrorInfo(type="timeout", message="read timed out", retryable=True)
    ok, other = result_record(_result(status="failed", error=timeout), "r")
    assert not ok and _shape({k: v for k, v in other.items() if k != "x_llmqueue"}) == _shape(batch_real)
    assert other["error"] == {"code": "timeout", "message": "read timed out"}


def test_invalid_record_names_line_and_field() -> None:
    with pytest.raises(LineError) as info:
        parse_line(json.dumps({**OPENAI_LINE, "url": "/v1/x"}), 12)
    record = invalid_record(info.value.issues)
    assert record["custom_id"] == "a" and record["response"] is None
    assert record["error"]["code"] == "invalid_url" and record["error"]["line"] == 12
    assert record["error"]["param"] == "url" and record["error"]["message"].startswith("line 12, url:")
    assert record["x_llmqueue"]["invalid"] is True


# --- ids, files, progress -------------------------------------------------------------------------------


def test_job_ids_are_valid_readable_and_distinct() -> None:
    ids = ["req-1", "req 1", "req_1", "a/b", "ü" * 300, "x:y", "b-" * 60]
    jobs = [job_id_for("abc123", cid) for cid in ids]
    assert len(set(jobs)) == len(jobs)
    assert jobs[0] == "b-abc123-req-1"
    for job_id in jobs:
        CompletionJob(id=job_id, model="default", messages=[{"role": "user", "content": "x"}])  # type: ignore[list-item]
    assert job_id_for("abc123", "req 1") == job_id_for("abc123", "req 1")


def test_id_set_grows_and_stays_small() -> None:
    ids = IdSet()
    for i in range(100_000):
        assert ids.add(f"request-{i}", i + 1) is None
    assert len(ids) == 100_000
    assert ids.add("request-41", 5) == 42  # the first value is kept
    assert "request-99999" in ids and "request-100000" not in ids and 5 not in ids
    assert ids.nbytes < 4_000_000  # a set of these strings takes ~10 MB


def test_read_outputs_cuts_a_torn_line_and_refuses_corruption(tmp_path: Path) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    with JsonlAppender(out) as appender:
        appender.write(result_record(_result(), "a")[1])
        appender.write(result_record(_result(id="b-1-b"), "b")[1])
    with open(out, "ab") as f:
        f.write(b'{"id": "batch_req_x", "custom_id": "c", "resp')  # a crash mid-write
    with JsonlAppender(err) as appender:
        appender.write(result_record(_result(status="failed", error=ErrorInfo(type="x", message="y")), "d")[1])
        appender.write(invalid_record(_issues_for_line(9)))
    state = read_outputs(out, err)
    assert "a" in state.done and "b" in state.done and "d" in state.done and "c" not in state.done
    assert (state.succeeded, state.failed, state.invalid_lines) == (2, 1, {9})
    assert state.repaired_bytes > 0 and out.read_bytes().endswith(b"}\n")
    assert read_outputs(out, err).repaired_bytes == 0
    out.write_bytes(out.read_bytes() + b"garbage\n" + b'{"custom_id": "z"}\n')
    with pytest.raises(BatchFileError, match=r"out\.jsonl:3"):
        read_outputs(out)


def test_one_writer_per_output_file(tmp_path: Path) -> None:
    with JsonlAppender(tmp_path / "out.jsonl"), pytest.raises(BatchFileError, match="another process"):
        JsonlAppender(tmp_path / "out.jsonl")
    with JsonlAppender(tmp_path / "out.jsonl") as appender:  # released on close
        appender.write({"custom_id": "a"})
    assert (tmp_path / "out.jsonl").read_text() == '{"custom_id":"a"}\n'


def _issues_for_line(line: int) -> list[Any]:
    with pytest.raises(LineError) as info:
        parse_line("{", line)
    return info.value.issues


def test_default_errors_path() -> None:
    assert default_errors_path("/x/out.jsonl") == Path("/x/out.errors.jsonl")
    assert default_errors_path("results") == Path("results.errors.jsonl")


def test_progress_plain_lines_when_not_a_terminal() -> None:
    stream, clock = io.StringIO(), FakeClock(100.0)
    progress = BatchProgress(stream, tty=False, plain_interval_s=10, clock=clock)
    counters = BatchCounters(todo=100, succeeded=10, failed=2, in_flight=5, prompt_tokens=1500, cost_usd=0.5)
    progress.update(counters)
    assert stream.getvalue() == ""  # not before the interval
    clock.now += 12
    progress.update(counters)
    line = stream.getvalue()
    assert line.startswith("llmq batch:") and line.endswith("\n") and "\r" not in line
    assert "done 12/100" in line and "failed 2" in line and "in flight 5" in line and "tokens 1.5k" in line
    assert "cost $0.50 " in line and "1.0/s" in line and "ETA 1:28" in line
    progress.finish(counters)
    assert "10 succeeded, 2 failed" in stream.getvalue().splitlines()[-1]


def test_a_batch_of_cheap_calls_does_not_read_as_free() -> None:
    """Three cheap lines cost $0.000039: four decimals showed "$0.0000". Micro-dollars are shown when
    there are any, the same as ``llmq spend`` and ``llmq budget``."""
    stream = io.StringIO()
    progress = BatchProgress(stream, tty=False, plain_interval_s=0, clock=FakeClock(0.0))
    counters = BatchCounters(todo=3, succeeded=3, cost_usd=0.000039)
    progress.update(counters, force=True)
    progress.finish(counters)
    lines = stream.getvalue().splitlines()
    assert "cost $0.000039 " in lines[0] and "cost $0.000039," in lines[-1], lines
    progress.finish(BatchCounters(todo=1, succeeded=1, cost_usd=1234.5))
    assert "cost $1,234.50," in stream.getvalue().splitlines()[-1]


def test_progress_redraws_one_line_on_a_terminal() -> None:
    stream, clock = io.StringIO(), FakeClock(100.0)
    progress = BatchProgress(stream, tty=True, clock=clock)
    counters = BatchCounters(todo=10)
    for i in range(3):
        clock.now += 1
        counters.succeeded = i
        progress.update(counters)
    assert stream.getvalue().count("\r") == 3 and "\n" not in stream.getvalue()
    progress.finish(counters, interrupted=True)
    assert "interrupted" in stream.getvalue().splitlines()[-1]
