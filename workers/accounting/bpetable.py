"""A bundled encoding's merge ranks as flat arrays: built once, cached on disk, mapped at load.

tiktoken's Rust tokenizer keeps one heap allocation per token in each of three tables (encoder,
decoder, sorted bytes): ~43 MB resident for ``o200k_base``. Counting needs only ``bytes -> rank``,
which fits in a few flat buffers (:class:`BPETable`, 6.8 MB for ``o200k_base``, 3.5 MB for
``cl100k_base``):

* ``blob``: every token's bytes, in rank order (ranks are ``0..n-1`` in both files), and
  ``offsets`` (``array('I')``, n + 1): token ``r`` is ``blob[offsets[r]:offsets[r + 1]]``;
* ``slots``: an open-addressing table (linear probing, load <= 0.5) of ``crc32 << 32 | rank``,
  keyed by ``zlib.crc32`` of the bytes: deterministic, unlike Python's salted ``hash()``, so a
  table built once serves every process;
* ``pairs``: the rank of every two-byte string (65,536 entries), where each merge starts;
* ``spans``: a Bloom filter (one crc32 hash, ~4 % false positives) of the four bytes around each
  place between two characters of two or more bytes that a token crosses (:func:`_span_windows`):
  where the four bytes around a place are not in it, no token crosses there
  (:mod:`~workers.accounting.compactbpe` cuts long pieces at such places).

The table is built from the bundled, sha256-checked BPE file (offline, ~0.4 s) and written beside
tiktoken's cache (:func:`~workers.accounting.bpefiles.tiktoken_cache_dir`) as one file; later loads
map that file (``mmap``: the pages are shared by every worker on the host) after checking its
header (format version, byte order, the BPE file's sha256) and a crc32 of its payload. A file that
fails a check is rebuilt and replaced; a cache that cannot be written leaves the table in memory.
"""

from __future__ import annotations

import binascii
import contextlib
import io
import mmap
import os
import re
import struct
import threading
import zlib
from array import array
from dataclasses import dataclass
from itertools import accumulate

from workers.accounting.bpefiles import (
    BUNDLED_ENCODINGS,
    bundled_bpe,
    release_free_heap,
    tiktoken_cache_dir,
    write_cache_file,
)

__all__ = [
    "FORMAT_VERSION",
    "NO_RANK",
    "BPETable",
    "build_table",
    "load_table",
    "table_path",
]

#: Bumped whenever the file layout or the build changes: an older file is rebuilt, never read.
FORMAT_VERSION = 1
#: The rank of bytes that are no token.
NO_RANK = 0xFFFFFFFF
_EMPTY = 0xFFFFFFFFFFFFFFFF  # a free slot: no crc32 << 32 | rank is all ones (ranks < 2**32 - 1)
_MAGIC = b"LLMQBPE\x00"
_ORDER = 0x01020304  # read back as written only on a machine of the same byte order
# magic, version, byte order, tokens, log2(slots), log2(span bits), blob bytes, longest token,
# payload crc32, BPE sha256
_HEADER = struct.Struct("=8s8I32s")

_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class BPETable:
    """One encoding's ranks in flat buffers (see the module docstring). ``source`` says where they
    came from: ``"cache"`` (the mapped file), ``"built"`` (built and written) or ``"memory"``
    (built; the cache is disabled or could not be written)."""

    slots: memoryview
    pairs: memoryview
    spans: memoryview
    offsets: memoryview
    blob: bytes
    max_len: int
    source: str

    @property
    def tokens(self) -> int:
        return len(self.offsets) - 1

    def rank(self, data: bytes) -> int:
        """The rank of the token ``data``, :data:`NO_RANK` if it is none (the reference lookup;
        :class:`~workers.accounting.compactbpe.CompactBPE` inlines it)."""
        if len(data) > self.max_len:
            return NO_RANK
        crc = zlib.crc32(data)
        slots, mask = self.slots, len(self.slots) - 1
        h = crc & mask
        while (entry := slots[h]) != _EMPTY:
            if entry >> 32 == crc:
                rank = entry & NO_RANK
                start = self.offsets[rank]
                if self.offsets[rank + 1] - start == len(data) and self.blob.startswith(data, start):
                    return rank
            h = (h + 1) & mask
        return NO_RANK


def table_path(name: str) -> str | None:
    """Where the table of encoding ``name`` is cached (None: tiktoken's cache is disabled)."""
    cache = tiktoken_cache_dir()
    return os.path.join(cache, f"llmq-{name}.bpetable") if cache else None


def build_table(bpe: bytes, sha256: str) -> bytes:
    """The table file's bytes for the BPE file ``bpe`` (``base64 rank`` per line, ranks ``0..n-1``)."""
    tokens: list[bytes] = []
    for i, line in enumerate(io.BytesIO(bpe)):  # a line at a time: no list of 200,000 lines
        encoded, number = line.split()
        if int(number) != i:
            raise ValueError(f"BPE file ranks are not 0..n-1 (line {i + 1} has rank {int(number)})")
        tokens.append(binascii.a2b_base64(encoded))
    if len(tokens) >= NO_RANK:
        raise ValueError("too many tokens for a 32-bit rank")
    log2 = max(16, (2 * len(tokens) - 1).bit_length())  # load factor <= 0.5
    mask = (1 << log2) - 1
    slots = array("Q", [_EMPTY]) * (1 << log2)
    for rank, crc in enumerate(map(zlib.crc32, tokens)):
        h = crc & mask
        while slots[h] != _EMPTY:
            h = (h + 1) & mask
        slots[h] = crc << 32 | rank
    pairs = array("I", [NO_RANK]) * 65536
    for rank, token in enumerate(tokens):
        if len(token) == 2:
            pairs[token[0] << 8 | token[1]] = rank
    offsets = array("I", accumulate(map(len, tokens), initial=0))
    if len({t for t in tokens if len(t) == 1}) != 256:
        raise ValueError("every byte must be a token")  # the merges start from single bytes
    blob = b"".join(tokens)
    windows = _span_windows(tokens)
    span_log2 = max(16, (24 * len(windows)).bit_length())  # >= 24 bits per key: ~4 % false positives
    span_mask = (1 << span_log2) - 1
    spans = bytearray(1 << (span_log2 - 3))
    for window in windows:
        h = zlib.crc32(window) & span_mask
        spans[h >> 3] |= 1 << (h & 7)
    parts = (memoryview(slots).cast("B"), memoryview(pairs).cast("B"), spans, memoryview(offsets).cast("B"), blob)
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    header = _HEADER.pack(
        _MAGIC,
        FORMAT_VERSION,
        _ORDER,
        len(tokens),
        log2,
        span_log2,
        len(blob),
        max(map(len, tokens), default=0),
        crc,
        bytes.fromhex(sha256),
    )
    return b"".join((header, *parts))  # one copy of the parts, not two


#: A place the cut test asks about, one byte before it: a continuation byte, then a lead byte.
_BOUNDARY = re.compile(rb"[\x80-\xbf][\xc0-\xff]")
_BYTES = [bytes([b]) for b in range(256)]


def _span_windows(tokens: list[bytes]) -> set[bytes]:
    """The keys of the ``spans`` filter: every four bytes ``w`` that a token crossing the middle of
    ``w`` can hold, where ``w[1]`` ends a character of two or more bytes and ``w[2]`` starts one
    (the only positions the cut test asks about). Such a token holds ``w`` itself, or starts at
    ``w[1]`` (then it starts with a continuation byte: a few dozen tokens), or ends at ``w[2]``
    (then it ends with a lead byte: a few dozen more); for those two every byte that may stand on
    the far side is added. The pair ``w[1:3]`` as a token of its own is the ``pairs`` table's."""
    keys: set[bytes] = set()
    for token in tokens:
        if token.isascii() or len(token) < 3:
            continue
        n = len(token)
        for match in _BOUNDARY.finditer(token):
            p = match.start() + 1  # token[p - 1] ends a character, token[p] starts one
            if p == 1:
                head = token[:3]
                keys.update(b + head for b in _BYTES)
            if p == n - 1:
                tail = token[-3:]
                keys.update(tail + b for b in _BYTES)
            if 2 <= p <= n - 2:
                keys.add(token[p - 2 : p + 2])
    return keys


def _parse(data: bytes | mmap.mmap, sha256: str, source: str) -> BPETable | None:
    """The table in ``data`` (a file's bytes), or None when a check fails."""
    if len(data) < _HEADER.size:
        return None
    magic, version, order, n, log2, span_log2, blob_len, max_len, crc, sha = _HEADER.unpack_from(data)
    if (magic, version, order, sha) != (_MAGIC, FORMAT_VERSION, _ORDER, bytes.fromhex(sha256)):
        return None
    if not (16 <= log2 <= 32 and 16 <= span_log2 <= 32):
        return None
    sizes = (8 << log2, 4 * 65536, 1 << (span_log2 - 3), 4 * (n + 1), blob_len)
    if len(data) != _HEADER.size + sum(sizes):
        return None
    view = memoryview(data)
    payload = view[_HEADER.size :]
    if zlib.crc32(payload) != crc:
        return None
    cuts = [_HEADER.size]
    for size in sizes:
        cuts.append(cuts[-1] + size)
    offsets = view[cuts[3] : cuts[4]].cast("I")
    if offsets[0] != 0 or offsets[n] != blob_len:
        return None
    return BPETable(
        slots=view[cuts[0] : cuts[1]].cast("Q"),
        pairs=view[cuts[1] : cuts[2]].cast("I"),
        spans=view[cuts[2] : cuts[3]],
        offsets=offsets,
        blob=bytes(view[cuts[4] : cuts[5]]),  # bytes: startswith() compares in place
        max_len=max_len,
        source=source,
    )


def _read_cached(path: str, sha256: str, source: str = "cache") -> BPETable | None:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER.size:
                return None
            mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)  # stays mapped after close
    except (OSError, ValueError):
        return None
    table = _parse(mapped, sha256, source)
    if table is None:
        with contextlib.suppress(BufferError):
            mapped.close()
    return table


def load_table(name: str) -> BPETable:
    """The table of bundled encoding ``name``: the cached file if it passes its checks, else built
    from the bundled BPE file and cached (best effort). Raises ``KeyError`` for an encoding we do
    not bundle, ``ConfigurationError`` if the bundled file fails its sha256 check."""
    sha256 = BUNDLED_ENCODINGS[name]
    path = table_path(name)
    with _lock:  # one build per process, however many threads ask first
        if path is not None and (table := _read_cached(path, sha256)) is not None:
            return table
        data = build_table(bundled_bpe(name), sha256)
        if path is not None and write_cache_file(path, data):
            table = _read_cached(path, sha256, "built")  # mapped, as every later process maps it
        else:
            table = None
        table = table or _parse(data, sha256, "memory")
        del data
        release_free_heap()  # what building left free (~20 MB for o200k_base) goes back to the OS
    if table is None:  # pragma: no cover - a table just built always parses
        raise RuntimeError(f"the {name} table failed its own checks")
    return table
