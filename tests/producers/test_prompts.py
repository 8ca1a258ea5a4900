"""Producer side of published prompts: label -> version at submit, variables checked, defaults filled.

Real Redis; jobs are inspected in the broker queue itself (nothing runs them here).
"""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter
from collections.abc import Iterator

import httpx2
import pytest
import redis

from producers.aclient import AsyncClient
from producers.client import Client, InvalidJobError
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from producers.prompts import PromptResolver
from tests.support.brokers import queued_payloads
from workers.contract import DEFAULT_QUEUE, JobKeys, LabelTarget, PromptLabel, PromptVersion
from workers.prompts.store import PromptStore

BODY = {
    "name": "greet",
    "version": 1,
    "input": {
        "type": "object",
        "properties": {"who": {"type": "string", "minLength": 1}, "times": {"type": "integer", "minimum": 1}},
        "required": ["who", "times"],
        "additionalProperties": False,
    },
    "defaults": {"model": "openai:gpt-4o-mini", "max_tokens": 77, "temperature": 0.3},
    "messages": [{"role": "user", "content": "{% for i in range(times) %}Hello {{ who }}! {% endfor %}"}],
}


def publish(client: redis.Redis, version: int = 1, **changes: object) -> PromptVersion:
    body = copy.deepcopy(BODY) | {"version": version} | changes
    v = PromptVersion.model_validate(body)
    PromptStore(client).publish(v)
    return v


def label(client: redis.Redis, name: str = "greet", **labels: list[tuple[int, int]]) -> None:
    PromptStore(client).set_labels(
        name, {k: PromptLabel(targets=[LabelTarget(version=v, weight=w) for v, w in t]) for k, t in labels.items()}
    )


def queued_jobs(client: redis.Redis) -> list[dict]:
    """The job payloads waiting in the broker queue (kombu's Redis transport: JSON, base64 body)."""
    jobs = []
    for raw in queued_payloads(client, DEFAULT_QUEUE):
        message = json.loads(raw)
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        jobs.append(args[0])
    return jobs


@pytest.fixture
def producer(redis_url: str) -> Iterator[Client]:
    with Client(redis_url) as c:
        yield c


def test_a_label_is_resolved_at_submit_and_defaults_fill_the_unset_fields(
    producer: Client, redis_client: redis.Redis
) -> None:
    v1 = publish(redis_client)
    label(redis_client, production=[(1, 100)])
    handle = producer.submit(
        {"prompt": {"name": "greet", "label": "production", "variables": {"who": "Ada", "times": 2}}}
    )
    [job] = queued_jobs(redis_client)
    assert job["id"] == handle.id
    assert job["prompt"] == {
        "name": "greet",
        "version": 1,
        "label": "production",
        "variables": {"who": "Ada", "times": 2},
        "hash": v1.hash,
    }
    assert (job["model"], job["max_tokens"], job["temperature"]) == ("openai:gpt-4o-mini", 77, 0.3)
    assert "messages" not in job


def test_fields_the_job_sets_win_over_the_defaults(producer: Client, redis_client: redis.Redis) -> None:
    publish(redis_client)
    producer.submit(
        {"model": "anthropic:claude-sonnet-4-5", "max_tokens": 5, "prompt": {"name": "greet", "version": 1,
         "variables": {"who": "Ada", "times": 1}}}
    )  # fmt: skip
    [job] = queued_jobs(redis_client)
    assert (job["model"], job["max_tokens"], job["temperature"]) == ("anthropic:claude-sonnet-4-5", 5, 0.3)


@pytest.mark.parametrize(
    ("variables", "loc", "message"),
    [
        ({"who": "Ada"}, ("prompt", "variables", "times"), "missing variable 'times'"),
        (
            {"who": "Ada", "times": 1, "mood": "x"},
            ("prompt", "variables", "mood"),
            "unknown variable 'mood' (not in the prompt's input schema)",
        ),
        ({"who": "Ada", "times": "2"}, ("prompt", "variables", "times"), "'2' is not of type 'integer'"),
        ({"who": "", "times": 1}, ("prompt", "variables", "who"), "'' should be non-empty"),
    ],
)
def test_bad_variables_are_refused_naming_the_field_and_nothing_is_enqueued(
    producer: Client, redis_client: redis.Redis, variables: dict, loc: tuple, message: str
) -> None:
    publish(redis_client)
    with pytest.raises(InvalidJobError) as err:
        producer.submit({"id": "bad-vars", "prompt": {"name": "greet", "version": 1, "variables": variables}})
    assert [(e["loc"], e["msg"]) for e in err.value.errors] == [(loc, message)]
    assert ".".join(loc) in str(err.value)
    assert queued_jobs(redis_client) == []
    assert not redis_client.exists(JobKeys("bad-vars").meta)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (
            {"name": "greet", "label": "staging"},
            r"prompt.label: prompt 'greet' has no label 'staging' \(its labels: none\)",
        ),
        (
            {"name": "greet", "version": 9},
            r"prompt.version: prompt 'greet' has no published version 9 \(published: 1\)",
        ),
        ({"name": "nope", "version": 1}, r"prompt.name: prompt 'nope' is not published \(llmq prompts push first\)"),
        ({"name": "gret", "version": 1}, r"prompt.name: prompt 'gret' is not published \(did you mean 'greet'\?\)"),
        ({"name": "gret", "label": "production"}, r"prompt 'gret' is not published \(did you mean 'greet'\?\)"),
        ({"name": "greet"}, "a prompt needs 'version' or 'label'"),
        ({"name": "Bad Name", "version": 1}, "prompt.name"),
    ],
)
def test_unknown_prompts_and_labels_are_refused(
    producer: Client, redis_client: redis.Redis, prompt: dict, message: str
) -> None:
    publish(redis_client)
    with pytest.raises(InvalidJobError, match=message):
        producer.submit({"prompt": prompt | {"variables": {}}})
    assert queued_jobs(redis_client) == []


async def test_a_misspelt_label_names_the_label_meant_in_both_clients(
    producer: Client, redis_client: redis.Redis, redis_url: str
) -> None:
    publish(redis_client)
    label(redis_client, production=[(1, 100)])
    job = {"prompt": {"name": "greet", "label": "producton", "variables": {"who": "Ada", "times": 1}}}
    says = "prompt.label: prompt 'greet' has no label 'producton' (did you mean 'production'?)"
    with pytest.raises(InvalidJobError) as sync_refused:
        producer.submit(job)
    async with AsyncClient(redis_url) as client:
        with pytest.raises(InvalidJobError) as async_refused:
            await client.submit(job)
    assert str(sync_refused.value) == str(async_refused.value) == f"invalid job: {says}"
    assert queued_jobs(redis_client) == []


def test_a_split_label_follows_its_weights_and_is_sticky_per_job_id(redis_client: redis.Redis) -> None:
    publish(redis_client, 3)
    publish(redis_client, 4)
    label(redis_client, production=[(3, 90), (4, 10)])
    resolver = PromptResolver(redis_client)
    variables = {"who": "Ada", "times": 1}

    def version_for(job_id: str) -> int:
        data = {"id": job_id, "prompt": {"name": "greet", "label": "production", "variables": variables}}
        return int(resolver.prepare(data)["prompt"]["version"])

    ids = [f"ticket-{n}" for n in range(1_000)]
    first = [version_for(i) for i in ids]
    shares = Counter(first)
    assert set(shares) == {3, 4}
    assert abs(shares[3] / 1_000 - 0.90) <= 0.03 and abs(shares[4] / 1_000 - 0.10) <= 0.03, shares
    assert [version_for(i) for i in ids] == first  # the same id always gets the same version
    # moving the split to 50/50 keeps most ids where they were (a stable bucket per id)
    label(redis_client, production=[(3, 50), (4, 50)])
    second = Counter(version_for(i) for i in ids)
    assert abs(second[3] / 1_000 - 0.50) <= 0.05, second


def test_a_job_object_with_a_prompt_gets_defaults_for_the_fields_it_left_unset(
    producer: Client, redis_client: redis.Redis
) -> None:
    from workers.contract import CompletionJob

    publish(redis_client)
    job = CompletionJob(model="default", prompt={"name": "greet", "version": 1, "variables": {"who": "A", "times": 1}})
    producer.submit(job)
    [queued] = queued_jobs(redis_client)
    assert (queued["id"], queued["model"], queued["max_tokens"]) == (job.id, "default", 77)


async def test_the_async_client_resolves_and_validates_the_same_way(redis_url: str, redis_client: redis.Redis) -> None:
    publish(redis_client)
    label(redis_client, production=[(1, 100)])
    client = AsyncClient(redis_url)
    try:
        await client.submit({"prompt": {"name": "greet", "label": "production", "variables": {"who": "B", "times": 1}}})
        with pytest.raises(InvalidJobError, match=r"prompt\.variables\.times"):
            await client.submit({"prompt": {"name": "greet", "label": "production", "variables": {"who": "B"}}})
    finally:
        await client.aclose()
    [job] = queued_jobs(redis_client)
    assert job["prompt"]["version"] == 1 and job["max_tokens"] == 77


def test_the_gateway_resolves_prompts_and_names_the_bad_variable(redis_url: str, redis_client: redis.Redis) -> None:
    publish(redis_client)
    label(redis_client, production=[(1, 100)])
    settings = GatewaySettings(redis_url=redis_url, tokens={"tok-prompts-0123456": "team-p"})
    with GatewayThread(create_gateway(settings)) as gw:
        headers = {"authorization": "Bearer tok-prompts-0123456"}
        with httpx2.Client(base_url=gw.url, headers=headers, timeout=30) as http:
            bad = http.post("/v1/jobs", json={"prompt": {"name": "greet", "label": "production", "variables": {}}})
            assert bad.status_code == 400, bad.text
            assert "times" in bad.json()["error"]["message"]
            ok = http.post(
                "/v1/jobs",
                json={"prompt": {"name": "greet", "label": "production", "variables": {"who": "C", "times": 1}}},
            )
            assert ok.status_code == 202, ok.text
    [job] = queued_jobs(redis_client)
    assert (job["tenant"], job["prompt"]["version"]) == ("team-p", 1)
