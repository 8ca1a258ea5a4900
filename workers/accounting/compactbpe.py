"""Exact token counts for the bundled encodings without tiktoken's Rust tokenizer.

:class:`CompactBPE` counts what ``len(tiktoken.get_encoding(name).encode_ordinary(text))`` counts,
from the same inputs: the bundled BPE files (as a :class:`~workers.accounting.bpetable.BPETable`,
~7 MB instead of the Rust tokenizer's ~43 MB for ``o200k_base``) and tiktoken's pre-tokenizing
pattern (:class:`~workers.accounting.pretokenize.PreTokenizer`: tiktoken_ext.openai_public's, with
tiktoken's Unicode tables). Each piece the pattern finds is one token if it is one, else merged as
tiktoken's ``_byte_pair_merge`` does: the adjacent pair of lowest rank first, ties to the leftmost.
Short pieces are merged by the same scan; longer ones with a heap of ``(rank, start)`` over a
linked list of parts, which picks the same pair at every step (a rank names one byte string, so an
entry is current exactly when its start still holds that rank) in ``O(n log n)`` instead of
``O(n^2)``. Counts of pieces are remembered in a bounded cache: a prompt's words repeat.

The tests prove the counts equal tiktoken's (``tests/workers/accounting/test_compactbpe.py``).
"""

from __future__ import annotations

import os
import re
import threading
import zlib
from collections.abc import Iterable
from heapq import heapify, heappop, heappush
from itertools import pairwise

from workers.accounting.bpefiles import BUNDLED_ENCODINGS, PRELOAD_ENV, load_compacted
from workers.accounting.bpetable import NO_RANK, BPETable, load_table
from workers.accounting.pretokenize import PreTokenizer

__all__ = ["CompactBPE", "compact_bpe", "preload_compacted"]

#: Pieces of at most this many bytes are merged by scanning (cheaper than a heap when short).
SCAN_MAX = 48
#: Pieces of characters of two or more bytes from this many bytes on are cut first (see _merged).
CUT_MIN = 6
#: The piece cache holds at most this many pieces and this many characters (~1 MB at worst).
CACHE_PIECES = 8192
CACHE_CHARS = 262_144

_EMPTY = 0xFFFFFFFFFFFFFFFF
#: A place between two characters of two or more bytes: after a continuation byte, at a lead byte.
_BOUNDARY = re.compile(rb"(?<=[\x80-\xbf])[\xc0-\xff]")
_THREE_BYTE_CHARS = re.compile(rb"(?:[\xe0-\xef][\x80-\xbf][\x80-\xbf])+")
_DEAD = -1  # the rank of a part merged into its left neighbour (never a heap entry's rank)


class CompactBPE:
    """Token counts of one bundled encoding; thread-safe (the cache is a dict: racing writers only
    repeat work). Build it with :func:`compact_bpe` (one per process and encoding)."""

    def __init__(
        self,
        name: str,
        table: BPETable,
        *,
        scan_max: int = SCAN_MAX,
        cache_pieces: int = CACHE_PIECES,
        cache_chars: int = CACHE_CHARS,
    ) -> None:
        self.name = name
        self.table = table
        self.pretokenizer = PreTokenizer(name)
        self.scan_max = scan_max
        self.cache_pieces = cache_pieces
        self.cache_chars = cache_chars
        self._slots = table.slots
        self._mask = len(table.slots) - 1
        self._pairs = table.pairs
        self._offsets = table.offsets
        self._blob = table.blob
        self._max_len = table.max_len
        self._spans = table.spans
        self._span_mask = len(table.spans) * 8 - 1
        self._cache: dict[str | bytes, int] = {}
        self._cache_chars = 0

    def __repr__(self) -> str:
        return f"<CompactBPE {self.name} ({self.table.tokens} tokens, {self.table.source})>"

    def count(self, text: str) -> int:
        """``len(encode_ordinary(text))`` of tiktoken's encoding of the same name."""
        pre = self.pretokenizer
        ascii_only = text.isascii()
        pieces = (pre.findall_ascii if ascii_only else pre.findall)(text)
        cached = self._cache.get
        counts = list(map(cached, pieces))
        if None not in counts:
            return sum(counts)  # type: ignore[arg-type]
        total = 0
        try:
            for piece, count in zip(pieces, counts, strict=True):
                if count is None and (count := cached(piece)) is None:  # a repeat of this text's own
                    if not ascii_only and pre.divergent(piece):  # (never cached: see pretokenize.py)
                        return sum(self._piece(p, remember=False) for p in pre.findall_exact(text))
                    count = self._piece(piece)
                total += count
        except UnicodeEncodeError:  # lone surrogates: tiktoken re-reads the text as it does here
            return self.count(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        return total

    def count_parts(self, parts: Iterable[str]) -> int:
        """The summed :meth:`count` of ``parts``."""
        return sum(map(self.count, parts))

    # one piece

    def _piece(self, piece: str, *, remember: bool = True) -> int:
        """tiktoken's count of one piece: 1 if it is a token, else what its merges leave."""
        data = piece.encode()
        count = 1 if len(data) == 1 or self._rank(data) != NO_RANK else self._merged(data)
        if remember:
            self._remember(piece, count)
        return count

    def _remember(self, key: str | bytes, count: int) -> None:
        cache = self._cache
        if len(cache) >= self.cache_pieces or self._cache_chars + len(key) > self.cache_chars:
            cache.clear()  # bounded: a text of ever new pieces only costs their merges
            self._cache_chars = 0
        if len(key) <= self.cache_chars // 4:
            cache[key] = count
            self._cache_chars += len(key)

    def _merged(self, data: bytes) -> int:
        """How many parts tiktoken's ``_byte_pair_merge`` leaves of ``data``.

        A long piece of characters of two or more bytes (CJK text without punctuation is one piece
        up to bounded.py's 1,024-character cut) is cut where no token crosses, so no merge does:
        each side then merges alone exactly as it does in place, and short sides (mostly one
        character) cost a few lookups. No token crosses the place p between two such characters
        when ``data[p-1:p+1]`` is no token (``pairs``) and the four bytes ``data[p-2:p+2]`` are not
        in the ``spans`` filter, which holds every such four bytes a token crossing p can hold
        (``bpetable._span_windows``; its false positives only cost a cut). ASCII letters almost
        never allow a cut, so an ASCII piece is not tried."""
        n = len(data)
        if n >= CUT_MIN and not data.isascii():
            pairs, spans, mask, crc32, part = self._pairs, self._spans, self._span_mask, zlib.crc32, self._part
            total = start = 0
            places: Iterable[int]
            if _THREE_BYTE_CHARS.fullmatch(data):  # CJK, kana, Hangul: every third byte, found at once
                places = range(3, n - 1, 3)
            else:
                places = [match.start() for match in _BOUNDARY.finditer(data, 2, n - 1)]
            for p in places:
                if pairs[data[p - 1] << 8 | data[p]] == NO_RANK:
                    h = crc32(data[p - 2 : p + 2]) & mask
                    if not spans[h >> 3] >> (h & 7) & 1:
                        total += part(data[start:p])
                        start = p
            if start:
                return total + part(data[start:])
        return self._merge_scan(data) if n <= self.scan_max else self._merge_heap(data)

    def _part(self, data: bytes) -> int:
        """:meth:`_merged` of a part of a cut piece, remembered (its key is bytes, a piece's str)."""
        if (count := self._cache.get(data)) is None:
            n = len(data)
            if n == 3:  # one CJK character: the scan's two steps written out
                if self._pairs[data[0] << 8 | data[1]] == self._pairs[data[1] << 8 | data[2]] == NO_RANK:
                    count = 3
                else:
                    count = 1 if self._rank(data) != NO_RANK else 2
            elif n == 2:
                count = 1 if self._pairs[data[0] << 8 | data[1]] != NO_RANK else 2
            else:
                count = self._merge_scan(data) if n <= self.scan_max else self._merge_heap(data)
            self._remember(data, count)
        return count

    def _rank(self, data: bytes) -> int:
        """The rank of the token ``data``; :data:`NO_RANK` if it is none (``BPETable.rank``)."""
        if len(data) > self._max_len:
            return NO_RANK
        crc = zlib.crc32(data)
        slots, mask = self._slots, self._mask
        h = crc & mask
        while (entry := slots[h]) != _EMPTY:
            if entry >> 32 == crc:
                rank = entry & NO_RANK
                start = self._offsets[rank]
                if self._offsets[rank + 1] - start == len(data) and self._blob.startswith(data, start):
                    return rank
            h = (h + 1) & mask
        return NO_RANK

    def _merge_scan(self, data: bytes) -> int:
        """tiktoken's ``_byte_pair_merge``, step for step: the number of parts left."""
        rank, pairs = self._rank, self._pairs
        bounds = list(range(len(data) + 1))
        # ranks[i]: merging parts i and i + 1 (data[bounds[i]:bounds[i + 2]])
        ranks = [pairs[a << 8 | b] for a, b in pairwise(data)]
        while ranks:
            low = min(ranks)
            if low == NO_RANK:
                break
            i = ranks.index(low)  # the leftmost of the lowest
            del bounds[i + 1], ranks[i]
            if i < len(ranks):
                ranks[i] = rank(data[bounds[i] : bounds[i + 2]])
            if i:
                ranks[i - 1] = rank(data[bounds[i - 1] : bounds[i + 1]])
        return len(bounds) - 1

    def _merge_heap(self, data: bytes) -> int:
        """The same merges as :meth:`_merge_scan`, chosen from a heap: the number of parts left.

        The hot loop of a long piece: :meth:`_rank` is written out in it (twice) to save its calls."""
        slots, mask, offsets, blob, max_len, crc32 = (
            self._slots,
            self._mask,
            self._offsets,
            self._blob,
            self._max_len,
            zlib.crc32,
        )
        pairs = self._pairs
        n = len(data)
        # parts are linked by their starts; ranks[i]: merging the part at i with the next one
        ranks = [pairs[a << 8 | b] for a, b in pairwise(data)]
        ranks.append(NO_RANK)
        heap = [r << 32 | i for i, r in enumerate(ranks) if r != NO_RANK]
        heapify(heap)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        parts = n
        while heap:
            entry = heappop(heap)
            i = entry & 0xFFFFFFFF
            if ranks[i] != entry >> 32:
                continue  # stale: the part at i changed, or was merged away
            j = nxt[i]
            k = nxt[j]  # the part after the merged one (n: none)
            ranks[j] = _DEAD
            nxt[i] = k
            parts -= 1
            r = NO_RANK  # the new part with the next one
            if k < n:
                prv[k] = i
                end = nxt[k]
                if end - i <= max_len:
                    window = data[i:end]
                    crc = crc32(window)
                    h = crc & mask
                    while (slot := slots[h]) != _EMPTY:
                        if slot >> 32 == crc:
                            t = slot & NO_RANK
                            if offsets[t + 1] - offsets[t] == end - i and blob.startswith(window, offsets[t]):
                                r = t
                                heappush(heap, r << 32 | i)
                                break
                        h = (h + 1) & mask
            ranks[i] = r
            p = prv[i]
            if p >= 0:  # the part before with the new one
                r = NO_RANK
                if k - p <= max_len:
                    window = data[p:k]
                    crc = crc32(window)
                    h = crc & mask
                    while (slot := slots[h]) != _EMPTY:
                        if slot >> 32 == crc:
                            t = slot & NO_RANK
                            if offsets[t + 1] - offsets[t] == k - p and blob.startswith(window, offsets[t]):
                                r = t
                                heappush(heap, r << 32 | p)
                                break
                        h = (h + 1) & mask
                ranks[p] = r
        return parts


_registry: dict[str, CompactBPE] = {}
_registry_lock = threading.Lock()


def compact_bpe(name: str) -> CompactBPE:
    """The process's counter for bundled encoding ``name`` (its table loaded on first use:
    :func:`~workers.accounting.bpetable.load_table`). ``KeyError`` for an encoding we do not bundle."""
    bpe = _registry.get(name)
    if bpe is None:
        with _registry_lock:
            bpe = _registry.get(name)
            if bpe is None:
                bpe = _registry[name] = CompactBPE(name, load_table(name))
    return bpe


def preload_compacted(names: Iterable[str] | None = None) -> list[str]:
    """Load ``names`` (default: those ``LLMQ_PRELOAD_ENCODINGS`` lists) as a worker counts them;
    returns what loaded: a bundled encoding's :func:`compact_bpe`, any other tiktoken's, compacted.

    The worker's first step after gevent's patches (``workers/runtime/launch.py``); its compacting
    ``TokenCounter`` then finds them loaded (process-wide instances). Best effort: a name tiktoken
    does not know or a bundled file that fails its check is skipped here, and the worker's start
    reports it."""
    if names is None:
        names = [n for n in os.environ.get(PRELOAD_ENV, "").split(",") if n.strip()]
    loaded: list[str] = []
    for name in (n.strip() for n in names):
        try:
            if name in BUNDLED_ENCODINGS:
                compact_bpe(name)
            else:
                load_compacted(name)
        except Exception:  # reported where the worker builds its resources (workers/runtime/resources.py)
            continue
        loaded.append(name)
    return loaded
