"""The scheduler's state in Redis: its key layout and its scripts, shared by producers and workers.

A queue on the Redis broker is not one list but a schedule: a list per class and tenant, rings of
the tenants and classes with work, the slots held per tenant and per concurrency key, parked
messages. Producers queue into it (:data:`PUSH`, through :mod:`workers.connections.schedtransport`)
and admit into it (:data:`REGISTER`); workers take from it (:data:`FETCH`: who runs next is decided
there, in the step that takes the message) and release what they held (:data:`RELEASE`,
:data:`RESTORE`). The layout is described in ``lua/sched_lib.lua``, the algorithm and its guarantees
in ``docs/scheduling.md``. The configuration the scripts read is one hash (:data:`CONF_KEY`), written
by workers at start from their ``[scheduling]`` and ``[tenants]`` tables (:func:`publish_conf`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any, NamedTuple

from workers.contract.schedule import DEFAULT_CLASS_WEIGHTS, PRIORITIES, SCHED_HEADER

__all__ = [
    "CLAIM",
    "CONF_KEY",
    "FETCH",
    "HELD_KEY",
    "PUSH",
    "REGISTER",
    "RELEASE",
    "RESTORE",
    "SUBMIT",
    "VIEW",
    "Attributes",
    "attributes_of",
    "bell_key",
    "conf_fields",
    "publish_conf",
    "queue_prefix",
    "script",
    "tenant_list",
]

#: The published configuration (fields: ``cw:<class>``, ``w:<tenant>``, ``mc:``, ``mq:``, ``kc:``,
#: ``kx:<key>``, ``kp``, ``kc``, ``ra``; tenant ``*`` holds the defaults for tenants not named; ``v``
#: its version, a digest of the others).
CONF_KEY = "llmq:sched:conf"
#: Delivery tag -> where the held message counts (its queue's prefix, class, tenant, key).
HELD_KEY = "llmq:sched:held"

#: Script names (files under ``lua/``, each run with ``sched_lib.lua`` before it).
PUSH, REGISTER, FETCH, RELEASE, RESTORE, CLAIM = "push", "register", "fetch", "release", "restore", "claim"
#: A producer's register and push in one script (``lua/submit.lua``).
SUBMIT = "submit"
#: The function libraries a script runs with, after ``sched_lib.lua`` and before its own file.
_LIBS: dict[str, tuple[str, ...]] = {
    PUSH: ("push_lib",),
    REGISTER: ("register_lib",),
    SUBMIT: ("register_lib", "push_lib"),
}
#: The read-only script of ``llmq queues``' view (``workers/connections/schedview.py``).
VIEW = "view"


def queue_prefix(queue: str) -> str:
    """The prefix of every scheduler key of a queue (its name is a Redis Cluster hash tag)."""
    return f"llmq:sched:{{{queue}}}:"


def tenant_list(queue: str, priority: str, tenant: str) -> str:
    """The list holding a tenant's queued messages of one class."""
    return f"{queue_prefix(queue)}l:{priority}:{tenant}"


def bell_key(queue: str) -> str:
    """The list consumers wait on: a token while there may be work to take."""
    return f"{queue_prefix(queue)}bell"


@functools.cache
def script(name: str) -> str:
    """A scheduling script's source: the shared functions, its libraries, then the script."""
    lua = resources.files("workers.connections") / "lua"
    parts = ("sched_lib", *_LIBS.get(name, ()), name)
    return "\n".join((lua / f"{part}.lua").read_text() for part in parts)


class Attributes(NamedTuple):
    """A message's class, tenant, concurrency key and job id ('' when it has none)."""

    priority: str
    tenant: str
    key: str | None
    job_id: str


def attributes_of(message: Mapping[str, Any]) -> Attributes:
    """The scheduling attributes of a kombu message dict (what its :data:`SCHED_HEADER` says; the
    defaults, class ``normal`` of tenant ``default``, for a message without one: the scripts read
    it the same way)."""
    headers = message.get("headers")
    headers = headers if isinstance(headers, Mapping) else {}
    raw = headers.get(SCHED_HEADER)
    job_id = headers.get("id")
    job_id = job_id if isinstance(job_id, str) else ""
    if not isinstance(raw, Mapping):
        return Attributes("normal", "default", None, job_id)
    priority = raw.get("priority")
    tenant = raw.get("tenant")
    key = raw.get("concurrency_key")
    return Attributes(
        priority if priority in PRIORITIES else "normal",
        tenant if isinstance(tenant, str) and tenant and _tenant_ok(tenant) else "default",
        key if isinstance(key, str) and key and not any(ch.isspace() for ch in key) else None,
        job_id,
    )


def _tenant_ok(tenant: str) -> bool:
    return all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in tenant)


def conf_fields(
    *,
    weights: Mapping[str, float],
    key_concurrency: int,
    keys: Mapping[str, int],
    retry_after_s: float,
    tenants: Mapping[str, Mapping[str, float | int | None]],
) -> dict[str, str]:
    """The published configuration's fields (:data:`CONF_KEY`) from the ``[scheduling]`` and ``[tenants]``
    tables: class weights (``weights`` over the defaults), the default key cap, key caps (exact keys,
    and ``prefix*`` patterns longest first), the refusal's retry-after, and each tenant's
    ``weight``, ``max_concurrency``, ``max_queued`` and ``key_concurrency`` (tenant ``*``: defaults)."""
    classes: dict[str, float] = {str(c): w for c, w in DEFAULT_CLASS_WEIGHTS.items()} | dict(weights)
    fields = {f"cw:{c}": _num(w) for c, w in classes.items()}
    fields["kc"] = str(key_concurrency)
    fields["ra"] = _num(retry_after_s)
    patterns = sorted(((k[:-1], cap) for k, cap in keys.items() if k.endswith("*")), key=lambda p: -len(p[0]))
    for key, cap in keys.items():
        if not key.endswith("*"):
            fields[f"kx:{key}"] = str(cap)
    if patterns:
        fields["kp"] = "".join(f"{prefix}\t{cap}\n" for prefix, cap in patterns)
    names = {"weight": "w", "max_concurrency": "mc", "max_queued": "mq", "key_concurrency": "kc"}
    for tenant, settings in tenants.items():
        for name, short in names.items():
            value = settings.get(name)
            if value is not None:
                fields[f"{short}:{tenant}"] = _num(value)
    return fields


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def publish_conf(client: Any, fields: Mapping[str, str]) -> bool:
    """Replace the published configuration with ``fields`` in one transaction; True when it changed
    (another worker with another configuration had published before: the last one wins).

    The configuration carries its version (``v``, a digest of the fields): the next fetch of each
    queue that sees a new one looks again at the tenants waiting at their cap and the parked keys,
    so a cap raised takes effect at once, not when one of the running jobs ends."""
    wanted = {k: str(v) for k, v in fields.items() if k != "v"}
    wanted["v"] = hashlib.sha1(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
    current = {_text(k): _text(v) for k, v in (client.hgetall(CONF_KEY) or {}).items()}
    if current == wanted:
        return False
    pipe = client.pipeline(transaction=True)
    pipe.delete(CONF_KEY)
    if wanted:
        pipe.hset(CONF_KEY, mapping=wanted)
    pipe.execute()
    return bool(current)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
