"""tiktoken's pre-tokenizing patterns, with the Unicode tables tiktoken uses.

tiktoken splits a text into pieces with a regex of Unicode classes (:data:`PATTERNS`, verbatim from
tiktoken_ext.openai_public) run by Rust's regex engine, whose tables are **Unicode 16.0** in tiktoken
0.14: a character assigned since (the ~4,300 of CJK Extension J, Sidetic, Tai Yo: Unicode 17) is
unassigned there, neither letter nor number. The ``regex`` module runs the same pattern with its
own, newer tables (2026.12's: ~17,500 code points in another class), so :class:`PreTokenizer`:

* runs :data:`ASCII_PATTERNS` with ``re`` on a text of ASCII characters only (each class is then its
  ASCII spelling; several times faster, and no ASCII character differs between versions);
* runs the pattern with ``regex`` on any other text (the brief's choice: its Unicode classes are as
  fast as tiktoken's own), unless a piece holds a code point whose class ``regex`` and Unicode 16.0
  disagree on (:func:`divergent_ranges`: worked out once per ``regex`` version and cached beside the
  BPE tables); then the text is split again with the pattern spelled out as Unicode 16.0's ranges
  (:func:`translate`: ``\\p{L}`` ... as ranges from ``data/unicode-16.0.0-classes.gz``, made from
  the Unicode Character Database by :func:`main`; ``\\s`` as White_Space; ``$``, the end of the text
  in Rust, as ``\\Z``), run by ``re``: exact, ~5x slower, and needed only for such rare characters.

Tests compare all three with tiktoken on every kind of text and on characters of every class.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import sys
import threading
import zlib
from array import array
from collections.abc import Callable, Iterator
from importlib import resources
from typing import TYPE_CHECKING, Final

from workers.accounting.bpefiles import release_free_heap, tiktoken_cache_dir, write_cache_file

if TYPE_CHECKING:
    import regex

__all__ = ["ASCII_PATTERNS", "PATTERNS", "UNICODE_VERSION", "PreTokenizer", "divergent_ranges", "translate"]

#: The Unicode version of tiktoken's regex tables (tiktoken 0.14; a test checks it still holds).
UNICODE_VERSION: Final = "16.0.0"

#: tiktoken_ext.openai_public's patterns (tiktoken 0.14), verbatim; a test checks them against tiktoken's.
PATTERNS: Final = {
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}

# The same for a text of ASCII characters only: there \p{L} is A-Za-z (\p{Lu} A-Z, \p{Ll} a-z; \p{Lt},
# \p{Lm}, \p{Lo} and \p{M} hold no ASCII character), \p{N} is 0-9, \s (White_Space) is \t\n\v\f\r and
# space, and the case-insensitive suffixes match their ASCII cases (U+017F, s's other case, is not ASCII).
_W = r"\t\n\x0b\x0c\r "
_SUFFIX = r"(?:'[sStTmMdD]|'[rR][eE]|'[vV][eE]|'[lL][lL])?"
ASCII_PATTERNS: Final = {
    "o200k_base": "|".join(
        [
            rf"[^\r\nA-Za-z0-9]?[A-Z]*[a-z]+{_SUFFIX}",
            rf"[^\r\nA-Za-z0-9]?[A-Z]+[a-z]*{_SUFFIX}",
            r"[0-9]{1,3}",
            rf" ?[^{_W}A-Za-z0-9]+[\r\n/]*",
            rf"[{_W}]*[\r\n]+",
            rf"[{_W}]+(?![^{_W}])",
            rf"[{_W}]+",
        ]
    ),
    "cl100k_base": "|".join(
        [
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])",
            r"[^\r\nA-Za-z0-9]?+[A-Za-z]++",
            r"[0-9]{1,3}+",
            rf" ?[^{_W}A-Za-z0-9]++[\r\n]*+",
            rf"[{_W}]++\Z",
            rf"[{_W}]*[\r\n]",
            rf"[{_W}]+(?![^{_W}])",
            rf"[{_W}]",
        ]
    ),
}

_DATA = f"unicode-{UNICODE_VERSION}-classes.gz"
# a run of code points from a start (hex) in one class: u l t m o (Lu Ll Lt Lm Lo), M (Mn Mc Me),
# N (Nd Nl No), - (any other category)
_RUN = re.compile(r"([0-9a-f]+)([ultmoMN-])")
_CLASS_OF = {"Lu": "u", "Ll": "l", "Lt": "t", "Lm": "m", "Lo": "o", "Mn": "M", "Mc": "M", "Me": "M"}
_CLASS_OF.update(Nd="N", Nl="N", No="N")
#: White_Space (PropList.txt; unchanged since Unicode 6.3), Rust's \s.
_WHITE_SPACE_CODES: tuple[tuple[int, int], ...] = ((0x9, 0xD), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0))
_WHITE_SPACE_CODES += ((0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F))
_WHITE_SPACE_CODES += ((0x3000, 0x3000),)
_WHITE_SPACE = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in _WHITE_SPACE_CODES)
_PROPERTY = re.compile(r"\\p\{(L[ultmo]?|M|N)\}|\\([sS])|\$|\[\^?|\]|\\.|.", re.S)


@functools.cache
def _runs() -> list[tuple[int, str]]:
    """Unicode 16.0's classes as runs: ``(first code point, class letter)``, in order."""
    text = gzip.decompress((resources.files("workers.accounting") / "data" / _DATA).read_bytes()).decode()
    return [(int(start, 16), cls) for start, cls in _RUN.findall(text)]


def _class_ranges() -> dict[str, str]:
    """Each class letter's code points as the inside of a ``re`` character class."""
    runs = _runs()
    parts: dict[str, list[str]] = {cls: [] for cls in "ultmoMN"}
    for (start, cls), (end, _) in zip(runs, [*runs[1:], (0x110000, "-")], strict=True):
        if cls != "-":
            parts[cls].append(_escape(start) if end - start == 1 else f"{_escape(start)}-{_escape(end - 1)}")
    return {cls: "".join(ranges) for cls, ranges in parts.items()}


def _escape(cp: int) -> str:
    return f"\\U{cp:08x}"


def translate(pattern: str) -> str:
    """tiktoken's ``pattern`` with its classes spelled out as Unicode 16.0's ranges (see the module)."""
    ranges = _class_ranges()
    inside = {
        "L": "".join(ranges[c] for c in "ultmo"),
        "Lu": ranges["u"],
        "Ll": ranges["l"],
        "Lt": ranges["t"],
        "Lm": ranges["m"],
        "Lo": ranges["o"],
        "M": ranges["M"],
        "N": ranges["N"],
        "s": _WHITE_SPACE,
    }
    out: list[str] = []
    in_class = False
    for match in _PROPERTY.finditer(pattern):
        prop, space, token = match.group(1), match.group(2), match.group(0)
        if prop or space == "s":
            body = inside[prop or "s"]
            out.append(body if in_class else f"[{body}]")
        elif space == "S":
            if in_class:
                raise ValueError("\\S inside a character class is not translated")
            out.append(f"[^{_WHITE_SPACE}]")
        elif token == "$" and not in_class:
            out.append(r"\Z")  # Rust's $ is the end of the text only; re's also matches before a last \n
        else:
            if token.startswith("["):
                in_class = True
            elif token == "]":
                in_class = False
            out.append(token)
    return "".join(out)


class PreTokenizer:
    """Finds encoding ``name``'s pieces in a text as tiktoken does (see the module)."""

    def __init__(self, name: str) -> None:
        import regex  # tiktoken's own dependency

        self.name = name
        #: For a text of ASCII characters only.
        self.findall_ascii: Callable[[str], list[str]] = re.compile(ASCII_PATTERNS[name]).findall
        #: For any other text, unless :meth:`divergent` says a piece needs :meth:`findall_exact`.
        self.findall: Callable[[str], list[str]] = regex.compile(PATTERNS[name]).findall
        self._exact: re.Pattern[str] | None = None
        # now, not at the first text that needs them: the worker builds this before its imports
        # (workers/runtime/launch.py), so working out the list (once per host) does not add to its peak
        self._checks = _divergence_checks()

    def divergent(self, piece: str) -> bool:
        """Whether ``piece`` (found by :attr:`findall`) holds a code point whose class the ``regex``
        module and tiktoken's Unicode 16.0 disagree on: then its text needs :meth:`findall_exact`."""
        bmp, astral = self._checks
        return bmp.search(piece) is not None or (_ASTRAL.search(piece) is not None and astral.search(piece) is not None)

    def findall_exact(self, text: str) -> list[str]:
        """The pieces of ``text`` with Unicode 16.0's classes spelled out (slower; any text)."""
        if self._exact is None:
            self._exact = re.compile(translate(PATTERNS[self.name]))
        return self._exact.findall(text)


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _divergence_checks() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Two searches for :func:`divergent_ranges`: its code points below U+10000 (``re`` matches a
    class of those from a bitmap), and those above (tried only when a piece holds such a character)."""
    bmp: list[str] = []
    astral: list[str] = []
    for first, last in divergent_ranges():
        for low, high, into in ((first, min(last, 0xFFFF), bmp), (max(first, 0x10000), last, astral)):
            if low <= high:
                into.append(_escape(low) if low == high else f"{_escape(low)}-{_escape(high)}")
    never = "(?!)"  # an empty class is no regex
    return (
        re.compile(f"[{''.join(bmp)}]" if bmp else never),
        re.compile(f"[{''.join(astral)}]" if astral else never),
    )


_DIVERGENT_LOCK = threading.Lock()
_DIVERGENT_FORMAT = 1


@functools.cache
def divergent_ranges() -> tuple[tuple[int, int], ...]:
    """The code points (as ``(first, last)`` ranges) whose class (a letter: Lu, Ll, Lt, Lm, Lo; a
    mark; a number; White_Space; none of those) the installed ``regex`` module and Unicode 16.0
    disagree on. Worked out by running each class over every code point (~0.25 s), once per
    ``regex`` version: the result is cached beside the BPE tables (crc-checked; rebuilt if not)."""
    import regex

    header = f"llmq-divergent {_DIVERGENT_FORMAT} unicode={UNICODE_VERSION} regex={regex.__version__}"
    cache = tiktoken_cache_dir()
    path = os.path.join(cache, f"llmq-unicode-{UNICODE_VERSION}-regex-{regex.__version__}.txt") if cache else None
    with _DIVERGENT_LOCK:
        if path is not None and (cached := _read_divergent(path, header)) is not None:
            return cached
        ranges = _work_out_divergent()
        release_free_heap()  # what working it out left free (~10 MB)
        if path is not None:
            body = "".join(f"{a:x}-{b:x}\n" for a, b in ranges)
            write_cache_file(path, f"{header} crc={zlib.crc32(body.encode()):08x}\n{body}".encode())
    return ranges


def _read_divergent(path: str, header: str) -> tuple[tuple[int, int], ...] | None:
    try:
        with open(path, encoding="ascii") as f:
            first, _, body = f.read().partition("\n")
        if first != f"{header} crc={zlib.crc32(body.encode()):08x}":
            return None
        return tuple((int(a, 16), int(b, 16)) for a, b in (line.split("-") for line in body.splitlines()))
    except (OSError, ValueError):
        return None


def _work_out_divergent() -> tuple[tuple[int, int], ...]:
    import regex

    size = 0x110000
    want = bytearray(size)  # Unicode 16.0's class letter of each code point
    runs = _runs()
    for (start, cls), (end, _) in zip(runs, [*runs[1:], (size, "-")], strict=True):
        want[start:end] = cls.encode() * (end - start)
    for part in _WHITE_SPACE_CODES:
        want[part[0] : part[1] + 1] = b"s" * (part[1] - part[0] + 1)
    codes = array("I", range(0xD800))  # every code point but the surrogates, as one string
    codes.extend(range(0xE000, size))
    every = codes.tobytes().decode("utf-32-le" if sys.byteorder == "little" else "utf-32-be")
    got = bytearray(b"-" * size)
    for prop, cls in (("Lu", "u"), ("Ll", "l"), ("Lt", "t"), ("Lm", "m"), ("Lo", "o"), ("M", "M"), ("N", "N")):
        _mark(got, regex.finditer(rf"\p{{{prop}}}+", every), cls.encode())
    _mark(got, regex.finditer(r"\s+", every), b"s")
    got[0xD800:0xE000] = want[0xD800:0xE000]  # never in a text tiktoken counts
    ranges: list[tuple[int, int]] = []
    step = 4096
    for base in range(0, size, step):
        if got[base : base + step] == want[base : base + step]:
            continue
        for cp in range(base, min(base + step, size)):
            if got[cp] != want[cp]:
                if ranges and ranges[-1][1] == cp - 1:
                    ranges[-1] = (ranges[-1][0], cp)
                else:
                    ranges.append((cp, cp))
    return tuple(ranges)


def _mark(into: bytearray, matches: Iterator[regex.Match[str]], cls: bytes) -> None:
    for match in matches:
        start, end = (m if m < 0xD800 else m + 0x800 for m in (match.start(), match.end() - 1))
        into[start : end + 1] = cls * (end - start + 1)


def main() -> None:  # pragma: no cover - run by hand, with the unicodedata2 of UNICODE_VERSION installed
    """Write ``data/unicode-16.0.0-classes.gz`` from the Unicode Character Database:
    ``pip install unicodedata2==16.0.0`` (any venv), then ``python -m workers.accounting.pretokenize``."""
    import unicodedata2  # type: ignore[import-not-found]

    if unicodedata2.unidata_version != UNICODE_VERSION:
        raise SystemExit(f"unicodedata2 has Unicode {unicodedata2.unidata_version}, not {UNICODE_VERSION}")
    runs: list[str] = []
    previous = None
    for cp in range(0x110000):
        cls = _CLASS_OF.get(unicodedata2.category(chr(cp)), "-")
        if cls != previous:
            runs.append(f"{cp:x}{cls}")
            previous = cls
    path = resources.files("workers.accounting") / "data" / _DATA
    with open(str(path), "wb") as f:
        f.write(gzip.compress("".join(runs).encode(), 9, mtime=0))


if __name__ == "__main__":  # pragma: no cover
    main()
