"""Published prompts on the wire: the job's ``prompt`` reference, a published version, labels, keys.

A prompt version is immutable: ``llmq prompts push`` stores it once under its number, with the
hash of its content; a label (``production``) is a movable pointer to one version or a weighted
split between several, chosen deterministically by job id. Producers resolve a label to a version
at submit, so a re-queued or redelivered job renders the version it was submitted with.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, field_validator, model_validator

from workers.contract.base import WireModel

__all__ = [
    "PROMPT_NAME",
    "LabelTarget",
    "PromptDefaults",
    "PromptInfo",
    "PromptKeys",
    "PromptLabel",
    "PromptMessage",
    "PromptRef",
    "PromptVersion",
    "content_hash",
    "normalize_schema",
    "split_bucket",
]

#: Prompt names: lower-case words joined by ``-`` or ``_`` (also a directory name).
PROMPT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
#: Split weights are integers; a label's weights need not sum to 100 (shares are weight / sum).
_BUCKETS = 10_000

PromptName = Annotated[str, Field(pattern=PROMPT_NAME.pattern)]
LabelName = Annotated[str, Field(pattern=_LABEL.pattern)]


class PromptRef(WireModel):
    """A job's prompt: which published prompt, which version (or label), with what variables.

    A producer sends ``label`` (or ``version``); the producer client resolves the label, checks the
    variables against the version's schema and fills ``version`` and ``hash`` before enqueueing.
    """

    name: PromptName
    version: Annotated[int, Field(ge=1)] | None = None
    label: LabelName | None = None
    variables: dict[str, JsonValue] = Field(default_factory=dict)
    #: Content hash of the version the producer validated against (set by the producer).
    hash: Annotated[str, Field(pattern=_HASH.pattern)] | None = None

    @model_validator(mode="after")
    def _which(self) -> PromptRef:
        if self.version is None and self.label is None:
            raise ValueError("a prompt needs 'version' or 'label'")
        return self

    @property
    def info(self) -> PromptInfo | None:
        if self.version is None or self.hash is None:
            return None
        return PromptInfo(name=self.name, version=self.version, hash=self.hash)


class PromptInfo(WireModel):
    """Which prompt version produced a job's messages (on the result and the ``start`` event)."""

    name: PromptName
    version: Annotated[int, Field(ge=1)]
    hash: Annotated[str, Field(pattern=_HASH.pattern)]

    @property
    def label(self) -> str:
        """``name@version``: the bounded-cardinality metrics label."""
        return f"{self.name}@{self.version}"


class PromptMessage(WireModel):
    role: Literal["system", "user", "assistant"]
    #: A Jinja2 template, rendered in the worker's sandbox.
    content: str = Field(min_length=1)


class PromptDefaults(WireModel):
    """Job fields a version fills when the job leaves them unset."""

    model: str | None = None
    max_tokens: Annotated[int, Field(gt=0, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    tools: list[dict[str, JsonValue]] | None = None


class PromptVersion(WireModel):
    """One published, immutable version: what ``prompts/<name>/v<N>.yaml`` holds, plus its hash."""

    name: PromptName
    version: Annotated[int, Field(ge=1)]
    description: str = ""
    #: JSON Schema (an object schema) of the variables.
    input: dict[str, JsonValue]
    messages: list[PromptMessage] = Field(min_length=1)
    defaults: PromptDefaults = Field(default_factory=PromptDefaults)
    #: Named sample variables for the golden tests.
    cases: dict[str, dict[str, JsonValue]] = Field(default_factory=dict)
    hash: str = ""

    @field_validator("input")
    @classmethod
    def _input(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return normalize_schema(value)

    @model_validator(mode="after")
    def _hashed(self) -> PromptVersion:
        expected = content_hash(self)
        if self.hash and self.hash != expected:
            raise ValueError(f"prompt {self.name} v{self.version}: hash does not match its content")
        self.hash = expected
        return self

    @property
    def info(self) -> PromptInfo:
        return PromptInfo(name=self.name, version=self.version, hash=self.hash)


def normalize_schema(schema: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """An ``input`` schema with its defaults: an object, every property required, no extras.

    Only what the schema leaves unsaid is filled: a schema with its own ``required`` or
    ``additionalProperties`` keeps them.
    """
    out: dict[str, JsonValue] = dict(schema)
    out.setdefault("type", "object")
    properties = out.setdefault("properties", {})
    if "required" not in out:
        required: list[JsonValue] = [name for name in sorted(properties)] if isinstance(properties, dict) else []
        out["required"] = required
    out.setdefault("additionalProperties", False)
    return out


def content_hash(version: PromptVersion) -> str:
    """sha256 of the version's canonical JSON (everything but the hash itself)."""
    body: dict[str, Any] = version.model_dump(mode="json", exclude={"hash"})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class LabelTarget(WireModel):
    version: Annotated[int, Field(ge=1)]
    weight: Annotated[int, Field(ge=1, le=_BUCKETS)] = 100


class PromptLabel(WireModel):
    """A movable pointer: one version, or a weighted split chosen by job id."""

    targets: list[LabelTarget] = Field(min_length=1, max_length=16)

    @field_validator("targets")
    @classmethod
    def _distinct(cls, value: list[LabelTarget]) -> list[LabelTarget]:
        versions = [t.version for t in value]
        if len(set(versions)) != len(versions):
            raise ValueError("a label names each version once")
        return value

    def choose(self, name: str, label: str, job_id: str) -> int:
        """The version for ``job_id``: the same id always gets the same version."""
        if len(self.targets) == 1:
            return self.targets[0].version
        total = sum(t.weight for t in self.targets)
        point = split_bucket(f"{name}:{label}:{job_id}") * total // _BUCKETS
        for target in self.targets:
            if point < target.weight:
                return target.version
            point -= target.weight
        return self.targets[-1].version

    def describe(self) -> str:
        """``3`` or ``3:90,4:10`` (the CLI's syntax)."""
        if len(self.targets) == 1:
            return str(self.targets[0].version)
        return ",".join(f"{t.version}:{t.weight}" for t in self.targets)


def split_bucket(key: str) -> int:
    """A stable bucket in ``[0, 10000)`` for ``key`` (sha256, so uniform for any id scheme)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % _BUCKETS


class PromptKeys:
    """Where published prompts live in Redis."""

    __slots__ = ("labels", "name", "versions")

    #: A set of every published prompt name.
    INDEX = "llmq:prompts"
    PREFIX = "llmq:prompt:"

    def __init__(self, name: str) -> None:
        self.name = name
        #: Hash: version number -> PromptVersion JSON (written once per field, HSETNX).
        self.versions = f"{self.PREFIX}{name}:versions"
        #: Hash: label -> PromptLabel JSON.
        self.labels = f"{self.PREFIX}{name}:labels"
