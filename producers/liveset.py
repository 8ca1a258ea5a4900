"""What live workers publish: a set of worker ids and one expiring key per worker, read back.

Workers publish their tool registries (``workers/contract/tools.py``) and their presence (queue and
model catalog, ``workers/contract/presence.py``) this way: each keeps its key fresh with a short TTL
and adds its id to a set. A reader takes the set's members and ``MGET``s their keys; a key that is
gone is a dead worker, whose id is dropped from the set. One reader for both, sync and asyncio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import redis
import redis.asyncio as aredis
from pydantic import BaseModel

__all__ = ["live_entries", "live_entries_async"]

Entry = TypeVar("Entry", bound=BaseModel)


def _keys(ids: Sequence[bytes | str], key_of: Callable[[str], str]) -> list[str]:
    return [key_of(i.decode() if isinstance(i, bytes) else i) for i in ids]


def _split(
    ids: Sequence[bytes | str], raws: Sequence[bytes | str | None], model: type[Entry]
) -> tuple[list[Entry], list[bytes | str]]:
    alive: list[Entry] = []
    dead: list[bytes | str] = []
    for worker_id, raw in zip(ids, raws, strict=True):
        if raw is None:
            dead.append(worker_id)
        else:
            alive.append(model.model_validate_json(raw))
    return alive, dead


def live_entries(client: redis.Redis, set_key: str, key_of: Callable[[str], str], model: type[Entry]) -> list[Entry]:
    """The entries of the workers alive now, by worker id (dead workers' ids are dropped from the set)."""
    ids = sorted(client.smembers(set_key))
    if not ids:
        return []
    alive, dead = _split(ids, client.mget(_keys(ids, key_of)), model)
    if dead:
        client.srem(set_key, *dead)
    return alive


async def live_entries_async(
    client: aredis.Redis, set_key: str, key_of: Callable[[str], str], model: type[Entry]
) -> list[Entry]:
    ids = sorted(await client.smembers(set_key))
    if not ids:
        return []
    alive, dead = _split(ids, await client.mget(_keys(ids, key_of)), model)
    if dead:
        await client.srem(set_key, *dead)
    return alive
