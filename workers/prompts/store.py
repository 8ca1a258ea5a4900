"""Published prompts in Redis: immutable versions, movable labels (key layout in the contract).

A version is written once (``HSETNX``): publishing the same content again is a no-op, publishing
different content under a published number is refused, naming the version. Labels point at
published versions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import redis

from workers.contract import PromptKeys, PromptLabel, PromptVersion

__all__ = ["PromptStore", "PublishConflictError", "Published", "UnknownPromptError"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PublishConflictError(ValueError):
    """A published version's content cannot change: a change is a new version."""


class UnknownPromptError(LookupError):
    pass


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    hash: str
    outcome: Literal["published", "unchanged"]


class PromptStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def publish(self, version: PromptVersion) -> Published:
        keys = PromptKeys(version.name)
        payload = version.model_dump_json()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(keys.versions, str(version.version), payload)
        pipe.sadd(PromptKeys.INDEX, version.name)
        pipe.hget(keys.versions, str(version.version))
        created, _, stored = pipe.execute()
        if created:
            return Published(version.name, version.version, version.hash, "published")
        existing = PromptVersion.model_validate_json(stored)
        if existing.hash != version.hash:
            raise PublishConflictError(
                f"prompt {version.name} v{version.version} is already published with different content "
                f"(hash {existing.hash[:12]}, the file's {version.hash[:12]}): published versions are "
                f"immutable, save the change as v{self.next_version(version.name)}"
            )
        return Published(version.name, version.version, version.hash, "unchanged")

    def next_version(self, name: str) -> int:
        numbers = [int(v) for v in self.redis.hkeys(PromptKeys(name).versions)]
        return max(numbers, default=0) + 1

    def names(self) -> list[str]:
        return sorted(_text(m) for m in self.redis.smembers(PromptKeys.INDEX))

    def versions(self, name: str) -> list[PromptVersion]:
        raw = self.redis.hgetall(PromptKeys(name).versions)
        return sorted((PromptVersion.model_validate_json(v) for v in raw.values()), key=lambda v: v.version)

    def get(self, name: str, version: int) -> PromptVersion:
        raw = self.redis.hget(PromptKeys(name).versions, str(version))
        if raw is None:
            raise UnknownPromptError(f"prompt {name} v{version} is not published")
        return PromptVersion.model_validate_json(raw)

    def labels(self, name: str) -> dict[str, PromptLabel]:
        raw = self.redis.hgetall(PromptKeys(name).labels)
        return {_text(k): PromptLabel.model_validate_json(v) for k, v in sorted(raw.items())}

    def label(self, name: str, label: str) -> PromptLabel:
        raw = self.redis.hget(PromptKeys(name).labels, label)
        if raw is None:
            raise UnknownPromptError(f"prompt {name} has no label {label!r}")
        return PromptLabel.model_validate_json(raw)

    def set_labels(self, name: str, labels: dict[str, PromptLabel]) -> None:
        """Move labels (all or nothing); every version they name must be published."""
        keys = PromptKeys(name)
        published = {int(v) for v in self.redis.hkeys(keys.versions)}
        if not published:
            raise UnknownPromptError(f"prompt {name} is not published (llmq prompts push first)")
        for label, target in labels.items():
            missing = [t.version for t in target.targets if t.version not in published]
            if missing:
                raise UnknownPromptError(
                    f"label {label!r}: prompt {name} has no published v{', v'.join(map(str, missing))}"
                )
        self.redis.hset(keys.labels, mapping={k: v.model_dump_json() for k, v in labels.items()})

    def resolve(self, name: str, ref: str | None) -> PromptVersion:
        """``ref`` is a version number, a label, or None (the latest version)."""
        if ref is None or ref == "latest":
            versions = self.redis.hkeys(PromptKeys(name).versions)
            if not versions:
                raise UnknownPromptError(f"prompt {name} is not published")
            return self.get(name, max(int(v) for v in versions))
        if ref.isdigit():
            return self.get(name, int(ref))
        target = self.label(name, ref)
        return self.get(
            name,
            target.targets[0].version
            if len(target.targets) == 1
            else max(target.targets, key=lambda t: t.weight).version,
        )
