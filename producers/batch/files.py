"""Files of a batch run: streaming input lines, crash-safe appends, and resuming from outputs.

An output line is written with one ``write()`` of the complete line (a file opened unbuffered
in append mode), so a killed process leaves whole lines; a torn last line (power loss, a full
disk) is cut off when the run resumes. Everything here streams: memory depends on the number of
ids remembered (:class:`IdSet`, ~17 bytes each), never on the size of the files.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BatchFileError", "IdSet", "JsonlAppender", "ResumeState", "iter_lines", "read_outputs"]

_BOM = b"\xef\xbb\xbf"
_MASK64 = (1 << 64) - 1


class BatchFileError(ValueError):
    """An output or errors file that cannot be resumed from (not ours, or corrupt mid-file)."""


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line)`` for every non-blank line, 1-based, read in a stream."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.strip():
                yield number, raw


class IdSet:
    """A set of strings kept as 64-bit hashes in one flat open-addressing table, each with a
    32-bit value (the line it was first seen on).

    A Python ``set`` of 1M short ids takes ~98 MB (measured); this takes ~17 MB. Strings are
    hashed with Python's own 64-bit string hash, so a table is only meaningful inside one process;
    two distinct ids collide with probability ~n²/2⁶⁵ (3e-8 for a million ids).
    """

    __slots__ = ("_keys", "_mask", "_size", "_values")

    def __init__(self, capacity: int = 1024) -> None:
        size = 1024
        while size * 0.7 < capacity:
            size *= 2
        self._alloc(size)
        self._size = 0

    def _alloc(self, size: int) -> None:
        self._keys = array("Q", [0]) * size
        self._values = array("I", [0]) * size
        self._mask = size - 1

    @staticmethod
    def _hash(key: str) -> int:
        return (hash(key) & _MASK64) or 1  # 0 marks an empty slot

    def add(self, key: str, value: int = 0) -> int | None:
        """Insert ``key``; returns the stored value when it was already present (not replaced)."""
        h = self._hash(key)
        keys, mask = self._keys, self._mask
        i = h & mask
        while True:
            slot = keys[i]
            if slot == 0:
                break
            if slot == h:
                return self._values[i]
            i = (i + 1) & mask
        keys[i] = h
        self._values[i] = value
        self._size += 1
        if self._size > len(keys) * 0.7:
            self._grow()
        return None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        h = self._hash(key)
        keys, mask = self._keys, self._mask
        i = h & mask
        while True:
            slot = keys[i]
            if slot == 0:
                return False
            if slot == h:
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old_keys, old_values = self._keys, self._values
        self._alloc(len(old_keys) * 2)
        keys, values, mask = self._keys, self._values, self._mask
        for h, value in zip(old_keys, old_values, strict=True):
            if h:
                i = h & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i] = h
                values[i] = value

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return len(self._keys) * (self._keys.itemsize + self._values.itemsize)


class JsonlAppender:
    """Appends JSON lines; each line is one ``os.write`` of the whole line, fsynced periodically.
    Holds an exclusive ``flock`` on the file while open (released when closed or on exit)."""

    def __init__(self, path: str | Path, *, fsync_every_s: float = 2.0, exclusive: bool = True) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if exclusive:
            # two runs of one batch would both write every line: the second one stops here
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                raise BatchFileError(f"{self.path} is being written by another process (llmq batch?)") from None
        self._fsync_every_s = fsync_every_s
        self._last_sync = time.monotonic()
        self._dirty = False
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for the exotic cases
            written = os.write(self._fd, view)
            view = view[written:]
        self.lines += 1
        self._dirty = True
        if time.monotonic() - self._last_sync >= self._fsync_every_s:
            self.sync()

    def sync(self) -> None:
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ResumeState:
    """What earlier runs already wrote: custom_ids with a result, and input lines reported invalid."""

    done: IdSet = field(default_factory=IdSet)
    #: those of them whose result is a failure (in the errors file)
    failed_ids: IdSet = field(default_factory=IdSet)
    #: input line numbers already written to the errors file as invalid
    invalid_lines: set[int] = field(default_factory=set)
    succeeded: int = 0
    failed: int = 0
    #: bytes cut off torn last lines
    repaired_bytes: int = 0


def read_outputs(*paths: str | Path) -> ResumeState:
    """Collect what existing output/errors files hold, cutting off a torn final line first."""
    state = ResumeState()
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        state.repaired_bytes += _repair_tail(path)
        for number, raw in iter_lines(path):
            try:
                record = json.loads(raw)
            except ValueError:
                raise BatchFileError(f"{path}:{number}: not valid JSON; refusing to resume from it") from None
            if not isinstance(record, dict) or "custom_id" not in record:
                raise BatchFileError(f"{path}:{number}: not a batch output line (no custom_id)")
            ours = record.get("x_llmqueue") or {}
            if ours.get("invalid"):
                if isinstance(ours.get("line"), int):
                    state.invalid_lines.add(ours["line"])
                continue
            custom_id = record["custom_id"]
            if isinstance(custom_id, str):
                state.done.add(custom_id)
                response = record.get("response") or {}
                if response.get("status_code") == 200 and record.get("error") is None:
                    state.succeeded += 1
                else:
                    state.failed += 1
                    state.failed_ids.add(custom_id)
    return state


def _repair_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; returns the number of bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        chunk = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            block = f.read(end - start)
            if end == size and block.endswith(b"\n"):
                return 0
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep
