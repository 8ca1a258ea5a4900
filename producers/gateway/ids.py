"""Job ids in gateway URLs: a server-made id, a full ``tenant:key``, or the caller's own key."""

from __future__ import annotations

import re

__all__ = ["ANY_ID", "SERVER_ID", "resolve_id"]

SERVER_ID = re.compile(r"^job_[0-9a-f]{32}$")
ANY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def resolve_id(tenant: str, path_id: str) -> str:
    """The stored id for an id in a URL: a server id or a full ``tenant:key`` as is, else this tenant's key."""
    if SERVER_ID.match(path_id) or ":" in path_id:
        return path_id
    return f"{tenant}:{path_id}"
