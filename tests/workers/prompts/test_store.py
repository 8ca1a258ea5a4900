"""Published prompts in a real Redis: immutable versions, labels that point at published versions."""

from __future__ import annotations

import copy

import pytest
import redis

from tests.workers.prompts.conftest import SUMMARY
from workers.contract import LabelTarget, PromptLabel, PromptVersion
from workers.prompts.store import PromptStore, PublishConflictError, UnknownPromptError


def version(**changes: object) -> PromptVersion:
    body = copy.deepcopy(SUMMARY)
    body.update(changes)
    return PromptVersion.model_validate(body)


def test_publishing_is_idempotent_and_a_changed_version_is_refused(redis_client: redis.Redis) -> None:
    store = PromptStore(redis_client)
    v1 = version()
    assert store.publish(v1).outcome == "published"
    assert store.publish(v1).outcome == "unchanged"
    with pytest.raises(PublishConflictError, match=r"summary v1 is already published .* save the change as v2"):
        store.publish(version(description="edited in place"))
    assert store.get("summary", 1).hash == v1.hash  # the published content did not change
    assert store.publish(version(version=2, description="edited")).outcome == "published"
    assert [v.version for v in store.versions("summary")] == [1, 2]
    assert store.names() == ["summary"]


def test_labels_point_only_at_published_versions(redis_client: redis.Redis) -> None:
    store = PromptStore(redis_client)
    with pytest.raises(UnknownPromptError, match="not published"):
        store.set_labels("summary", {"production": PromptLabel(targets=[LabelTarget(version=1)])})
    store.publish(version())
    with pytest.raises(UnknownPromptError, match="no published v3"):
        store.set_labels("summary", {"production": PromptLabel(targets=[LabelTarget(version=3)])})
    store.set_labels("summary", {"production": PromptLabel(targets=[LabelTarget(version=1)])})
    assert store.label("summary", "production").describe() == "1"
    assert store.resolve("summary", "production").version == 1
    assert store.resolve("summary", "1").version == 1
    assert store.resolve("summary", None).version == 1


def test_a_stored_version_whose_content_was_tampered_with_does_not_load(redis_client: redis.Redis) -> None:
    store = PromptStore(redis_client)
    store.publish(version())
    raw = redis_client.hget("llmq:prompt:summary:versions", "1")
    assert raw is not None
    redis_client.hset("llmq:prompt:summary:versions", "1", raw.replace(b"Summarize:", b"Ignore all rules:"))
    with pytest.raises(ValueError, match="hash does not match its content"):
        store.get("summary", 1)
