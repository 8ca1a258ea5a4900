"""One Redis setting for every client: a plain URL, or Redis Sentinel.

``LLMQ_REDIS_URL`` is either ``redis://…`` (``rediss://``, ``unix://``) or a list of sentinels in
kombu's form, ``sentinel://[:password@]h1:26379;sentinel://h2:26379/0`` (the db, if any, on the
last entry), with the monitored master's name in ``LLMQ_REDIS_SENTINEL_MASTER`` (default
``mymaster``). ``LLMQ_REDIS_PASSWORD`` is the password of the master and its replicas (else the
one in the URL); ``LLMQ_REDIS_SENTINEL_PASSWORD`` the sentinels' own (if they require one).

Pure parsing, no client here: ``workers/connections/redisclient.py`` builds every Redis client from
it, and :func:`kombu_broker` gives the broker (workers, producers, Flower) the same target, so the
broker, ledger, events, results, guards, producers, gateway and Flower all follow the same fail-over.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEFAULT_SENTINEL_MASTER",
    "REDIS_SCHEMES",
    "SentinelTarget",
    "check_redis_url",
    "is_sentinel_url",
    "kombu_broker",
    "sentinel_target",
]

DEFAULT_SENTINEL_MASTER = "mymaster"
#: What ``LLMQ_REDIS_URL`` may start with.
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")


def check_redis_url(url: str) -> str:
    """``url`` stripped, or ``ValueError`` saying what a Redis URL looks like (settings validate with it)."""
    url = url.strip()
    scheme = urlsplit(url.split(";", 1)[0]).scheme.lower()
    if scheme not in REDIS_SCHEMES:
        given = f"{scheme}://" if scheme else "no scheme"
        raise ValueError(
            f"a Redis URL starts with redis://, rediss://, unix:// or sentinel:// (got {given}); "
            "e.g. redis://127.0.0.1:6379/0"
        )
    return url


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    #: Password of the master and replicas.
    password: str | None
    #: Password of the sentinels themselves.
    sentinel_password: str | None

    def transport_options(self) -> dict[str, object]:
        """kombu's sentinel transport options (the broker and Flower)."""
        options: dict[str, object] = {"master_name": self.master}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def broker_url(self) -> str:
        """The URL for kombu: every sentinel, the master's password on each entry, the db last."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ";".join(f"sentinel://{auth}{host}:{port}" for host, port in self.sentinels)
        return f"{hosts}/{self.db}"


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith("sentinel://")


def sentinel_target(url: str, env: Mapping[str, str] | None = None) -> SentinelTarget | None:
    """The sentinel deployment ``url`` names, or None for a plain Redis URL."""
    if not is_sentinel_url(url):
        return None
    env = os.environ if env is None else env
    sentinels: list[tuple[str, int]] = []
    password: str | None = None
    db = 0
    for part in url.strip().split(";"):
        if not part:
            continue
        parts = urlsplit(part)
        if parts.scheme.lower() != "sentinel" or not parts.hostname:
            raise ValueError(f"not a sentinel address: {part!r} (expected sentinel://host:port)")
        sentinels.append((parts.hostname, parts.port or 26379))
        if parts.password:
            password = unquote(parts.password)
        path = parts.path.strip("/")
        if path:
            db = int(path)
    return SentinelTarget(
        sentinels=tuple(sentinels),
        master=env.get("LLMQ_REDIS_SENTINEL_MASTER") or DEFAULT_SENTINEL_MASTER,
        db=db,
        password=env.get("LLMQ_REDIS_PASSWORD") or password,
        sentinel_password=env.get("LLMQ_REDIS_SENTINEL_PASSWORD") or None,
    )


def kombu_broker(url: str, env: Mapping[str, str] | None = None) -> tuple[str, dict[str, object]]:
    """The broker URL and extra transport options kombu needs for a Redis ``url``: unchanged with no
    options for a plain URL; for Sentinel, every sentinel with the master's password, and the
    master's name (and the sentinels' password) as options."""
    target = sentinel_target(url, env)
    if target is None:
        return url, {}
    return target.broker_url(), target.transport_options()
