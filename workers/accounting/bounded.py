"""Bounded token counting: the counter's cost and stack depth kept in check on hostile text.

tiktoken's pre-tokenizer and BPE are super-linear in the length of one *piece* (a run of letters,
of punctuation, of whitespace), and its regex engine recurses per character of a whitespace run:
1,000,000 spaces raise ``pyo3_runtime.PanicException`` (a ``BaseException``: stack overflow), and
100,000 already cost a second of CPU. The worker's own counter
(:class:`~workers.accounting.compactbpe.CompactBPE`) merges long pieces in ``O(n log n)`` but pays
Python's cost per byte. So every text longer than :data:`CHUNK_CHARS` is counted in chunks of at
most that many characters, whichever counter (:class:`TokenLengths`) counts:

* a chunk ends just before a space that is followed by a non-space character. Every piece of
  ``cl100k_base`` and ``o200k_base`` starts there (a space never sits inside a piece, only as its
  one-character prefix), so for ordinary text the sum over the chunks is **exact**;
* a run with no such boundary (a long run of spaces, letters, CJK text without spaces) is cut
  hard; a hard cut may change the count by a token or so, and the count says it is an estimate.

Above :data:`MAX_EXACT_CHARS` characters per count, the rest is not encoded at all: it counts as
one token per UTF-8 byte, an upper bound for byte-level BPE (never under-reserving the budget),
again labelled as an estimate. Work per count is therefore linear and capped: about a second of
CPU at worst with tiktoken, a few with the worker's counter (``bench/bpe_worst_case.py``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import tiktoken

__all__ = ["CHUNK_CHARS", "MAX_EXACT_CHARS", "TiktokenLengths", "TokenLengths", "bounded_len", "chunks"]

#: Longest text encoded in one call.
CHUNK_CHARS = 1024
#: How far back from a chunk's end a clean boundary (space before a non-space) is looked for.
_WINDOW = 256
#: Characters per count that are encoded at all; the rest is bounded by its UTF-8 length.
MAX_EXACT_CHARS = 1_100_000

_SEP = "<|endoftext|>"
_SEP_ALLOWED = frozenset({_SEP})
_JOIN_MIN_PARTS = 48
#: The last " " followed by a non-space in a window (greedy ``.*`` backtracks from the end).
_LAST_BOUNDARY = re.compile(r"(?s:.*) (?=\S)")


class TokenLengths(Protocol):
    """What counts tokens for :func:`bounded_len`: tiktoken (:class:`TiktokenLengths`) or the
    worker's :class:`~workers.accounting.compactbpe.CompactBPE`."""

    def count(self, text: str) -> int:
        """``len(encode_ordinary(text))``."""
        ...

    def count_parts(self, parts: list[str]) -> int:
        """The summed :meth:`count` of ``parts``."""
        ...


class TiktokenLengths:
    """A tiktoken encoding's token counts (:class:`TokenLengths`)."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def count_parts(self, parts: list[str]) -> int:
        """Sum of ``len(encode_ordinary(p))`` over ``parts``, exactly.

        Many parts are joined around ``<|endoftext|>`` and encoded in one call: tiktoken splits on
        allowed special tokens first and runs BPE on each segment alone, so the sum is unchanged and
        the per-call overhead is paid once. For a few long parts one call each measured cheaper
        (the join pays an extra special-token scan). A part containing the separator text itself
        falls back to per-part encoding.
        """
        enc = self.encoding
        if len(parts) <= _JOIN_MIN_PARTS:
            return sum(map(len, map(enc.encode_ordinary, parts)))
        text = _SEP.join(parts)
        if text.count(_SEP) != len(parts) - 1:
            return sum(map(len, map(enc.encode_ordinary, parts)))
        return len(enc.encode(text, allowed_special=_SEP_ALLOWED, disallowed_special=())) - (len(parts) - 1)


def chunks(text: str, size: int = CHUNK_CHARS) -> tuple[list[str], bool]:
    """``text`` cut into pieces of at most ``size`` characters; True when every cut is clean."""
    n = len(text)
    if n <= size:
        return [text], True
    out: list[str] = []
    clean = True
    start = 0
    while n - start > size:
        end = start + size
        m = _LAST_BOUNDARY.match(text, max(start + 1, end - _WINDOW), end)
        if m is not None:
            cut = m.end() - 1  # the space starts the next chunk, as it starts the next piece
        else:
            cut, clean = end, False
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out, clean


def bounded_len(lengths: TokenLengths, parts: list[str], *, max_chars: int = MAX_EXACT_CHARS) -> tuple[int, bool]:
    """``(tokens, exact)``: the summed ``len(encode_ordinary(p))`` over ``parts``, bounded.

    Short parts (the common case) are counted as they are (``lengths.count_parts``); ``exact`` is
    False when a hard cut or the size cap was needed.
    """
    pieces: list[str] = []
    exact = True
    budget = max_chars
    over = 0
    for part in parts:
        if len(part) > budget:
            over += len(part[budget:].encode("utf-8", "surrogatepass"))
            part, exact = part[:budget], False
        budget -= len(part)
        if len(part) > CHUNK_CHARS:
            cut, clean = chunks(part)
            pieces.extend(cut)
            exact = exact and clean
        elif part:
            pieces.append(part)
    return lengths.count_parts(pieces) + over, exact
