"""OpenAI's Files API as the simulator keeps it: uploads (``multipart/form-data``), listing, content.

Only what the Batch API needs: ``POST /v1/files`` (fields ``purpose`` and ``file``), ``GET /v1/files``
(``purpose``, ``limit``, ``after``, ``order``; newest first by default), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content`` and ``DELETE /v1/files/{id}``. Output and error files of finished
batches live here too (purpose ``batch_output``). Everything is in memory; ``POST /_sim/reset``
clears it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator.request import RequestError

__all__ = ["FileStore", "StoredFile", "parse_multipart"]

_ids = itertools.count(1)


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a ``multipart/form-data`` body; :class:`RequestError` if malformed."""
    boundary = ""
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise RequestError("uploads must be multipart/form-data with a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise RequestError("malformed multipart body (no closing boundary)")
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise RequestError("malformed multipart part")
        head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise RequestError("malformed multipart part (no blank line after its headers)")
        name, filename = None, None
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() != "content-disposition":
                continue
            for item in value.split(";")[1:]:
                k, _, v = item.strip().partition("=")
                if k == "name":
                    name = v.strip('"')
                elif k == "filename":
                    filename = v.strip('"')
        if name is None:
            raise RequestError("a multipart part without a name")
        fields[name] = (filename, data)
    return fields


@dataclass
class FileStore:
    clock: Callable[[], float] = time.time
    files: dict[str, StoredFile] = field(default_factory=dict)

    def add(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        stored = StoredFile(f"file-sim{next(_ids):08d}", filename, purpose, content, int(self.clock()))
        self.files[stored.id] = stored
        return stored

    def upload(self, content_type: str, body: bytes) -> StoredFile:
        fields = parse_multipart(content_type, body)
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
        if not purpose:
            raise RequestError("purpose: Field required")
        if purpose not in ("batch", "fine-tune", "assistants", "vision", "user_data", "evals"):
            raise RequestError(f"'{purpose}' is not one of ['batch', 'fine-tune', 'assistants', 'vision', ...]")
        if "file" not in fields:
            raise RequestError("file: Field required")
        filename, content = fields["file"]
        return self.add(filename or "upload", purpose, content)

    def get(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise RequestError(f"No such File object: {file_id}", status=404)
        return stored

    def listing(self, query: dict[str, str]) -> dict[str, object]:
        """``GET /v1/files``: newest first unless ``order=asc``, after the ``after`` cursor."""
        purpose = query.get("purpose")
        limit = _limit(query.get("limit"), 10_000, 10_000)
        rows = [f for f in self.files.values() if purpose is None or f.purpose == purpose]
        if query.get("order", "desc") != "asc":
            rows.reverse()
        after = query.get("after")
        if after:
            ids = [f.id for f in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        page = rows[:limit]
        return {
            "object": "list",
            "data": [f.as_json() for f in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(rows) > limit,
        }

    def delete(self, file_id: str) -> dict[str, object]:
        self.get(file_id)
        del self.files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}


def _limit(raw: str | None, default: int, most: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"limit: not an integer: {raw!r}") from None
    if not 1 <= value <= most:
        raise RequestError(f"limit must be between 1 and {most}")
    return value
