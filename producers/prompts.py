"""Producer side of published prompts: resolve a label to a version, check the variables, fill defaults.

A job that names a ``prompt`` by ``label`` gets the label's version (for a split label, chosen
deterministically by the job id) before it is enqueued, so a re-queued or redelivered job renders
the version it was submitted with even after the label moved. Its variables are validated against
that version's JSON Schema: a missing, extra or ill-typed variable is an :class:`InvalidJobError`
naming the field, and nothing is enqueued. The version's ``defaults`` (model, max_tokens,
temperature, tools) fill the fields the job leaves unset.

Published versions are immutable, so they (and their compiled schema validators) are cached by
name and version; labels are read on every submit (one ``HGET``), since they move.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import jsonschema
import redis
import redis.asyncio as aredis
from pydantic import ValidationError

from producers.errors import InvalidJobError
from workers.contract import CompletionJob, PromptKeys, PromptLabel, PromptRef, PromptVersion, new_job_id
from workers.contract.catalog import close_names

__all__ = ["AsyncPromptResolver", "PromptResolver", "apply_prompt", "job_data", "variable_errors"]

_DEFAULTED = ("model", "max_tokens", "temperature", "tools")


def job_data(job: CompletionJob | dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The job as a dict of the fields the caller set (so prompt defaults can fill the rest)."""
    if isinstance(job, CompletionJob):
        if job.prompt is None:
            return job.model_dump(exclude_unset=False) | overrides
        return job.model_dump(exclude_unset=True) | {"id": job.id} | overrides
    return {**job, **overrides}


def _invalid(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> InvalidJobError:
    return InvalidJobError(f"invalid job: {'.'.join(map(str, loc))}: {msg}", [{"loc": loc, "msg": msg, "type": kind}])


def variable_errors(version: PromptVersion, variables: dict[str, Any]) -> list[dict[str, Any]]:
    """Each problem with ``variables`` for ``version`` (pydantic-style ``loc``/``msg``/``type``)."""
    schema: dict[str, Any] = dict(version.input)
    base: tuple[str, ...] = ("prompt", "variables")
    errors: list[dict[str, Any]] = []
    properties = schema.get("properties") or {}
    for name in sorted(set(schema.get("required") or []) - set(variables)):
        errors.append({"loc": (*base, name), "msg": f"missing variable {name!r}", "type": "missing"})
    if schema.get("additionalProperties") is False:
        for name in sorted(set(variables) - set(properties)):
            errors.append(
                {"loc": (*base, name), "msg": f"unknown variable {name!r} (not in the prompt's input schema)",
                 "type": "extra_forbidden"}
            )  # fmt: skip
    for error in jsonschema.Draft202012Validator(schema).iter_errors(variables):
        if error.validator in ("required", "additionalProperties"):
            continue  # reported above, by name
        errors.append({"loc": (*base, *error.absolute_path), "msg": error.message, "type": str(error.validator)})
    return errors


def apply_prompt(data: dict[str, Any], ref: PromptRef, version: PromptVersion) -> dict[str, Any]:
    """``data`` with the resolved version and hash, defaults filled, variables checked."""
    errors = variable_errors(version, dict(ref.variables))
    if errors:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise InvalidJobError(f"invalid job: {problems}", errors)
    if ref.hash is not None and ref.hash != version.hash:
        raise _invalid(("prompt", "hash"), f"prompt {ref.name} v{version.version} has hash {version.hash[:12]}")
    out = dict(data)
    defaults = version.defaults.model_dump(exclude_none=True)
    for field in _DEFAULTED:
        if out.get(field) is None and field in defaults:
            out[field] = defaults[field]
    out["prompt"] = ref.model_copy(update={"version": version.version, "hash": version.hash}).model_dump(
        exclude_none=True
    )
    return out


def _ref(data: dict[str, Any]) -> PromptRef:
    raw = data["prompt"]
    if isinstance(raw, PromptRef):
        return raw
    try:
        return PromptRef.model_validate(raw)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [{**e, "loc": ("prompt", *e["loc"])} for e in exc.errors(include_url=False)]
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise InvalidJobError(f"invalid job: {problems}", errors) from None


class _Cache:
    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[tuple[str, int], PromptVersion] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> PromptVersion | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, int], value: PromptVersion) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _start(data: dict[str, Any]) -> tuple[dict[str, Any], PromptRef]:
    ref = _ref(data)
    if not data.get("id"):
        data = {**data, "id": new_job_id()}
    return data, ref


def _label(name: str, label: str, raw: bytes | str | None) -> PromptLabel:
    if raw is None:
        raise _invalid(("prompt", "label"), f"prompt {name!r} has no label {label!r}")
    return PromptLabel.model_validate_json(raw)


def _version(name: str, number: int, raw: bytes | str | None) -> PromptVersion:
    if raw is None:
        raise _invalid(("prompt", "version"), f"prompt {name!r} has no published version {number}")
    return PromptVersion.model_validate_json(raw)


def _texts(values: Any) -> list[str]:
    return sorted(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _not_found(name: str, ref: str, names: list[str], labels: list[str], versions: list[str]) -> InvalidJobError:
    """What was meant by a prompt reference Redis has nothing for: the name (a typo of a published
    one), else the label or version (with those the prompt has). Read only on this error path."""
    if name not in names:
        close = close_names(name, names)
        hint = f" (did you mean {close[0]!r}?)" if close else " (llmq prompts push first)"
        return _invalid(("prompt", "name"), f"prompt {name!r} is not published{hint}")
    if ref.isdigit():
        published = ", ".join(sorted(versions, key=int)) or "none"
        return _invalid(
            ("prompt", "version"), f"prompt {name!r} has no published version {ref} (published: {published})"
        )
    if ref in labels:
        return _invalid(("prompt", "version"), f"prompt {name!r}: label {ref!r} names a version that is not published")
    close = close_names(ref, labels)
    hint = f"did you mean {close[0]!r}?" if close else f"its labels: {', '.join(labels) or 'none'}"
    return _invalid(("prompt", "label"), f"prompt {name!r} has no label {ref!r} ({hint})")


def _refs(ref: PromptRef) -> str:
    return str(ref.version) if ref.version is not None else str(ref.label)


class PromptResolver:
    """For :class:`producers.Client`: one ``HGET`` per label, published versions cached."""

    def __init__(self, client: redis.Redis, *, cache_size: int = 256) -> None:
        self.redis = client
        self._cache = _Cache(cache_size)

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("prompt") is None:
            return data
        data, ref = _start(data)
        try:
            number = ref.version
            if number is None:
                assert ref.label is not None
                label = _label(ref.name, ref.label, self.redis.hget(PromptKeys(ref.name).labels, ref.label))
                number = label.choose(ref.name, ref.label, str(data["id"]))
            return apply_prompt(data, ref, self.version(ref.name, number))
        except InvalidJobError as exc:
            if not exc.errors or tuple(exc.errors[0]["loc"]) not in (("prompt", "label"), ("prompt", "version")):
                raise
            keys = PromptKeys(ref.name)
            names, labels, versions = (
                self.redis.smembers(PromptKeys.INDEX),
                self.redis.hkeys(keys.labels),
                self.redis.hkeys(keys.versions),
            )
            raise _not_found(ref.name, _refs(ref), _texts(names), _texts(labels), _texts(versions)) from None

    def version(self, name: str, number: int) -> PromptVersion:
        found = self._cache.get((name, number))
        if found is None:
            found = _version(name, number, self.redis.hget(PromptKeys(name).versions, str(number)))
            self._cache.put((name, number), found)
        return found


class AsyncPromptResolver:
    """The asyncio twin of :class:`PromptResolver` (for AsyncClient and the gateway)."""

    def __init__(self, client: aredis.Redis, *, cache_size: int = 256) -> None:
        self.redis = client
        self._cache = _Cache(cache_size)

    async def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("prompt") is None:
            return data
        data, ref = _start(data)
        number = ref.version
        keys = PromptKeys(ref.name)
        if number is None:
            assert ref.label is not None
            raw = await self.redis.hget(keys.labels, ref.label)
            if raw is None:
                raise await self._not_found(ref)
            number = _label(ref.name, ref.label, raw).choose(ref.name, ref.label, str(data["id"]))
        found = self._cache.get((ref.name, number))
        if found is None:
            raw = await self.redis.hget(keys.versions, str(number))
            if raw is None:
                raise await self._not_found(ref)
            found = _version(ref.name, number, raw)
            self._cache.put((ref.name, number), found)
        return apply_prompt(data, ref, found)

    async def _not_found(self, ref: PromptRef) -> InvalidJobError:
        keys = PromptKeys(ref.name)
        names = await self.redis.smembers(PromptKeys.INDEX)
        labels, versions = await self.redis.hkeys(keys.labels), await self.redis.hkeys(keys.versions)
        return _not_found(ref.name, _refs(ref), _texts(names), _texts(labels), _texts(versions))
