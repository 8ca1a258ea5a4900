"""Published prompts end to end: push -> label -> submit by label -> a real worker renders -> the provider.

The simulator records each request's message texts (``/_sim/requests``), so these tests check what
actually reached the provider, not just what the job carried.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis
from celery.contrib.testing.worker import start_worker

from producers import Client
from producers.client import make_celery
from simulator.app import SimulatorThread
from simulator.env import provider_env
from workers.contract import TASK_NAME, JobKeys, LabelTarget, PromptLabel, PromptVersion
from workers.prompts.loader import load_library
from workers.prompts.render import render_version
from workers.prompts.sandbox import PromptSandbox
from workers.prompts.store import PromptStore
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "prompts"
TEXT = "The release adds retries, fixes a leak in the batch runner and drops Python 3.10."


@pytest.fixture
def summarize(redis_client: redis.Redis) -> dict[int, PromptVersion]:
    """The shipped ``summarize`` prompt, pushed; ``production`` on v1."""
    store = PromptStore(redis_client)
    versions = {v.version: v for v in load_library(EXAMPLES) if v.name == "summarize"}
    for version in versions.values():
        store.publish(version)
    move(store, 1)
    return versions


def move(store: PromptStore, version: int) -> None:
    store.set_labels("summarize", {"production": PromptLabel(targets=[LabelTarget(version=version)])})


def variables(version: int) -> dict[str, object]:
    return {"text": TEXT, "sentences": 2} if version == 1 else {"text": TEXT, "audience": "engineers", "bullets": 3}


def expected_prompt(version: PromptVersion) -> str:
    """The text the simulator records: every rendered message's content, joined by spaces."""
    messages = render_version(version, variables(version.version), PromptSandbox())
    return " ".join(m.content or "" for m in messages)


def sim_requests(simulator: SimulatorThread, job_id: str) -> list[dict]:
    return httpx2.get(f"{simulator.url}/_sim/requests", params={"job": job_id}).json()


@pytest.fixture
def requeue_worker(redis_url: str, simulator: SimulatorThread, tmp_path: Path) -> Iterator[object]:
    """A worker that re-queues any wait over 0.2 s (so a 429 with retry-after 1 s re-queues the job)."""
    config = tmp_path / "llmq.toml"
    config.write_text("max_inworker_wait_s = 0.2\nmax_requeues = 3\n")
    settings = Settings(
        redis_url=redis_url, pool="threads", concurrency=4, coalesce_ms=20.0, claim_lease_s=10, config=str(config)
    )
    app = create_app(settings, provider_env=provider_env(simulator.url))
    try:
        with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10) as w:
            yield w
    finally:
        close_runner(app)


def test_a_job_submitted_by_label_reaches_the_provider_rendered(
    worker: object, client: Client, simulator: SimulatorThread, summarize: dict[int, PromptVersion]
) -> None:
    v1 = summarize[1]
    handle = client.submit({"prompt": {"name": "summarize", "label": "production", "variables": variables(1)}})
    events = list(handle.stream(timeout=60))
    result = handle.result(timeout=10)
    assert result.status == "succeeded", result.error
    assert result.prompt == v1.info
    assert events[0].type == "start" and events[0].prompt == v1.info
    [request] = sim_requests(simulator, handle.id)
    assert request["prompt"] == expected_prompt(v1)
    assert request["messages"] == 2
    assert request["model"] == "gpt-4o-mini"  # v1's defaults: model "default" (the route alias)


def test_moving_the_label_changes_new_jobs_only(
    worker: object, client: Client, redis_client: redis.Redis, simulator: SimulatorThread,
    summarize: dict[int, PromptVersion],
) -> None:  # fmt: skip
    before = client.submit({"prompt": {"name": "summarize", "label": "production", "variables": variables(1)}})
    assert before.result(timeout=60).prompt == summarize[1].info
    move(PromptStore(redis_client), 2)
    after = client.submit({"prompt": {"name": "summarize", "label": "production", "variables": variables(2)}})
    result = after.result(timeout=60)
    assert result.status == "succeeded" and result.prompt == summarize[2].info
    assert [r["prompt"] for r in sim_requests(simulator, after.id)] == [expected_prompt(summarize[2])]
    # rolling back is moving the label again
    move(PromptStore(redis_client), 1)
    again = client.submit({"prompt": {"name": "summarize", "label": "production", "variables": variables(1)}})
    assert again.result(timeout=60).prompt == summarize[1].info


def test_a_job_requeued_across_a_label_move_keeps_its_version(
    requeue_worker: object, client: Client, redis_client: redis.Redis, simulator: SimulatorThread,
    summarize: dict[int, PromptVersion],
) -> None:  # fmt: skip
    handle = client.submit(
        {
            "model": "openai:gpt-4o~429@1",  # first request: 429 retry-after 1 s -> re-queued; then ok
            "prompt": {"name": "summarize", "label": "production", "variables": variables(1)},
        }
    )
    move(PromptStore(redis_client), 2)  # after submit: the job already carries v1
    result = handle.result(timeout=60)
    assert result.status == "succeeded", result.error
    assert [a.error_type for a in result.attempts] == ["rate_limited", None]
    assert redis_client.hget(JobKeys(handle.id).meta, "requeues") == b"1"  # re-queued once, not slept
    requests = sim_requests(simulator, handle.id)
    assert len(requests) == 2  # the run told to wait, and the re-queued run
    assert {r["prompt"] for r in requests} == {expected_prompt(summarize[1])}
    assert result.prompt == summarize[1].info


def test_the_padding_attack_cannot_reach_a_worker(
    worker: object, client: Client, redis_url: str, simulator: SimulatorThread
) -> None:
    attack = {"model": "openai:gpt-4o-mini", "template": "{x:>300000000}", "variables": {"x": "1"}}
    from producers.client import InvalidJobError

    with pytest.raises(InvalidJobError, match="format spec"):
        client.submit(attack | {"id": "pad-producer"})
    # sent raw, past the producer: the worker's own validation refuses it and ends the job
    celery = make_celery(redis_url)
    try:
        celery.send_task(TASK_NAME, args=[attack | {"id": "pad-raw"}], task_id="pad-raw")
    finally:
        celery.close()
    result = client.result("pad-raw", timeout=60)
    assert result.status == "failed" and "format spec" in (result.error.message if result.error else "")
    assert sim_requests(simulator, "pad-raw") == []


def test_batch_lines_name_a_published_prompt(
    worker: object, client: Client, simulator: SimulatorThread, summarize: dict[int, PromptVersion], tmp_path: Path
) -> None:
    import json

    from producers.batch import BatchValidationError, run_batch
    from producers.batch.runner import batch_id_for, job_id_for

    lines = [
        {"custom_id": "ok-1", "prompt": {"name": "summarize", "label": "production", "variables": variables(1)}},
        {"custom_id": "bad-1", "prompt": {"name": "summarize", "version": 1, "variables": {"text": "x"}}},
        {"custom_id": "ok-2", "model": "openai:gpt-4o-mini", "prompt": {"name": "summarize", "version": 2,
         "variables": variables(2)}},
    ]  # fmt: skip
    source, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    # pass one checks each line's variables against its published version: nothing is enqueued
    with pytest.raises(BatchValidationError) as refused:
        run_batch(source, out, errors_path=errors, model="default", client=client, handle_signals=False)
    [issue] = refused.value.report.issues
    assert (issue.line, issue.code, issue.custom_id) == (2, "invalid_prompt", "bad-1")
    assert issue.param == "prompt.variables.sentences", issue
    batch_id = batch_id_for(source, out)
    assert [client.status(job_id_for(batch_id, c)) for c in ("ok-1", "ok-2")] == [None, None]
    assert not out.exists()
    # with skip_invalid the bad line goes to the errors file and the others run
    summary = run_batch(
        source, out, errors_path=errors, model="default", client=client, handle_signals=False, skip_invalid=True
    )
    assert (summary.succeeded, summary.invalid) == (2, 1)
    records = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["ok-1"]["x_llmqueue"]["prompt"] == summarize[1].info.model_dump(mode="json")
    assert records["ok-2"]["x_llmqueue"]["prompt"] == summarize[2].info.model_dump(mode="json")
    [bad] = map(json.loads, errors.read_text().splitlines())
    assert bad["custom_id"] == "bad-1" and "prompt.variables.sentences" in json.dumps(bad)
