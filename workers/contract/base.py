"""Names, ids and the base of every wire object."""

from __future__ import annotations

import re
import secrets
from typing import Final

from pydantic import BaseModel, ConfigDict

#: Bumped on any incompatible change of the models below.
SCHEMA_VERSION: Final = 1
#: The single Celery task name; producers send by name and never import the task.
TASK_NAME = "llmq.run_job"
#: Default Celery queue for jobs.
DEFAULT_QUEUE = "llmq"

#: ``provider:model``.
MODEL_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*:[^\s:][^\s]*$")
#: A route alias or a bare model name (``gpt-4o-mini``, ``llama3.1:8b``, ``gpt-4o~429@2``): resolved
#: by the catalog (``workers/contract/catalog.py``), which refuses what nobody knows; never ending in ``:``.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[^\s]{0,198}[^\s:])?$")
#: A metadata key that looks like a credential (refused: keys never travel in jobs).
SECRET_KEY_PATTERN = re.compile(r"(?i)(api[_-]?key|authorization|secret|password|passwd|bearer|access[_-]?token)")
#: A job id (the idempotency key; it names the job's Redis keys).
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
#: A configured webhook's name (``[webhooks.endpoints.<name>]``); anything with ``://`` is a URL.
WEBHOOK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def new_job_id() -> str:
    """An unguessable job id (128 bits of randomness)."""
    return "job_" + secrets.token_hex(16)


def split_model_id(model: str) -> tuple[str, str]:
    """``"openai:gpt-4o"`` -> ``("openai", "gpt-4o")``; ValueError for a name without a provider."""
    provider, sep, name = model.partition(":")
    if not sep or not provider or not name:
        raise ValueError(f"{model!r} is not a provider:model id (e.g. 'openai:gpt-4o')")
    return provider, name


def base_model_name(name: str) -> str:
    """A model name without its ``~variant`` tag: ``gpt-4o~eu`` is priced and counted as ``gpt-4o``.

    Real provider model names never contain ``~``; the tag lets one model appear several times in
    routes (and selects the simulator's scripted faults, e.g. ``gpt-4o~429@2``).
    """
    return name.partition("~")[0]


def check_model_ref(value: str) -> str:
    if MODEL_ID_PATTERN.match(value) or NAME_PATTERN.match(value):
        return value
    raise ValueError(
        f"model {value!r} must be 'provider:model' (e.g. 'openai:gpt-4o'), a route alias (e.g. 'default') "
        "or a model name (e.g. 'gpt-4o-mini')"
    )


class WireModel(BaseModel):
    """Base of every wire object: unknown fields are errors (values assigned later are not re-validated)."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


def unencodable_text_path(value: object, path: str = "") -> str | None:
    """Where in a raw (JSON-like) value a string cannot be written as UTF-8, or ``None``.

    JSON lets a caller send a lone surrogate (``"\\ud800"``); Python accepts it in a ``str``, but no
    event, result or log line holding it could ever be serialized, so such a job would end with no
    terminal event. It is refused at validation instead, naming the field.
    """
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(job)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unencodable_text_path(key, path) or unencodable_text_path(
                item, f"{path}.{key}" if path else str(key)
            )
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = unencodable_text_path(item, f"{path}[{i}]")
            if found:
                return found
    return None
