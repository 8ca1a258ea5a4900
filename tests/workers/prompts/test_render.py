"""Rendering a job on the worker: published prompts from Redis, the inline template, the caps."""

from __future__ import annotations

import copy
import tracemalloc

import pytest
import redis
from pydantic import ValidationError

from tests.workers.prompts.conftest import SUMMARY
from workers.contract import CompletionJob, PromptVersion
from workers.llm.errors import PromptError
from workers.prompts.render import PromptRenderer, render_inline
from workers.prompts.store import PromptStore


def published(client: redis.Redis, **changes: object) -> PromptVersion:
    body = copy.deepcopy(SUMMARY)
    body.update(changes)
    version = PromptVersion.model_validate(body)
    PromptStore(client).publish(version)
    return version


def prompt_job(**prompt: object) -> CompletionJob:
    return CompletionJob.model_validate({"model": "openai:gpt-4o-mini", "prompt": {"name": "summary", **prompt}})


def test_a_published_version_renders_with_its_info(redis_client: redis.Redis) -> None:
    version = published(redis_client)
    renderer = PromptRenderer(redis_client)
    rendered = renderer.render(prompt_job(version=1, hash=version.hash, variables={"text": "Hi.", "n": 2}))
    assert [(m.role, m.content) for m in rendered.messages] == [
        ("system", "Summaries of 2 sentences."),
        ("user", "Summarize: Hi."),
    ]
    assert rendered.prompt == version.info and rendered.prompt.label == "summary@1"


def test_a_version_is_read_once_then_served_from_the_cache(redis_client: redis.Redis) -> None:
    version = published(redis_client)
    renderer = PromptRenderer(redis_client)
    job = prompt_job(version=1, hash=version.hash, variables={"text": "a", "n": 1})
    renderer.render(job)
    redis_client.delete("llmq:prompt:summary:versions")  # immutable: the cached copy is still right
    assert renderer.render(job).prompt == version.info


def test_a_hash_other_than_the_one_submitted_is_an_error(redis_client: redis.Redis) -> None:
    published(redis_client)
    job = prompt_job(version=1, hash="0" * 64, variables={"text": "a", "n": 1})
    with pytest.raises(PromptError, match="is not the one the job was submitted with"):
        PromptRenderer(redis_client).render(job)


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ({"label": "production", "variables": {}}, "was not resolved to a version"),
        ({"version": 7, "variables": {}}, "summary v7 is not published"),
        ({"version": 1, "variables": {"text": "a"}}, "'n' is a required property"),
        ({"version": 1, "variables": {"text": "a", "n": "two"}}, r"variables\.n: 'two' is not of type 'integer'"),
        ({"version": 1, "variables": {"text": "a", "n": 1, "x": 1}}, "Additional properties are not allowed"),
    ],
)
def test_jobs_that_cannot_render_fail_with_a_prompt_error(
    redis_client: redis.Redis, prompt: dict, problem: str
) -> None:
    published(redis_client)
    with pytest.raises(PromptError, match=problem):
        PromptRenderer(redis_client).render(prompt_job(**prompt))


def test_the_rendered_prompt_is_capped(redis_client: redis.Redis) -> None:
    version = published(redis_client)
    job = prompt_job(version=1, hash=version.hash, variables={"text": "x" * 2_000, "n": 1})
    with pytest.raises(PromptError, match="over the cap of 1,000"):
        PromptRenderer(redis_client, max_chars=1_000).render(job)


# --- the inline template ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["{x:>300000000}", "{x:300000000}", "{x!r}", "{x.__class__}", "{x[0]}", "{0}", "{x:{y}}"],
)
def test_the_padding_attack_and_other_format_features_are_refused_by_the_contract(template: str) -> None:
    with pytest.raises(ValidationError, match="template placeholder"):
        CompletionJob.model_validate({"model": "openai:gpt-4o", "template": template, "variables": {"x": "1"}})


def test_the_inline_template_fills_plain_placeholders() -> None:
    assert render_inline("Summarize {text} in {n} words", {"text": "this", "n": "3"}) == "Summarize this in 3 words"
    assert render_inline("{{literal}} {x}", {"x": "1"}) == "{literal} 1"


def test_the_inline_template_is_size_checked_before_it_is_built() -> None:
    template = "{x}" * 1_000  # 3 kB of template, 1 MB of variable: a gigabyte if built
    tracemalloc.start()
    try:
        with pytest.raises(PromptError, match="would be 1,000,000,000 characters"):
            render_inline(template, {"x": "a" * 1_000_000}, max_chars=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


def test_the_inline_template_still_refuses_specs_when_handed_past_the_contract() -> None:
    with pytest.raises(PromptError, match="format spec"):
        render_inline("{x:>300000000}", {"x": "1"})
