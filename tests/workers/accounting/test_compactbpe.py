"""The worker's token counter (CompactBPE) counts exactly what tiktoken counts.

tiktoken is the oracle: every case compares ``CompactBPE.count`` with ``len(encode_ordinary)`` of
tiktoken's encoding of the same name, for both bundled encodings, on real files, seeded random
Unicode, runs of whitespace and digits, code, bounded.py's hostile texts and characters of every
Unicode class (including those tiktoken's Unicode 16.0 and the ``regex`` module disagree on).
Each text is counted twice: the second count reads the piece cache the first one filled.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.conformance_cases import CONFORMANCE
from workers.accounting.bounded import TiktokenLengths, bounded_len
from workers.accounting.bpefiles import BUNDLED_ENCODINGS
from workers.accounting.bpetable import load_table
from workers.accounting.compactbpe import CompactBPE
from workers.accounting.pretokenize import PATTERNS, divergent_ranges
from workers.accounting.tokens import TokenCounter

REPO = Path(__file__).resolve().parents[3]
ENCODINGS = list(BUNDLED_ENCODINGS)


@pytest.fixture(scope="module", params=ENCODINGS)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def bpe(name: str) -> CompactBPE:
    """A counter of its own (not the process's): its piece cache starts empty for this module."""
    return CompactBPE(name, load_table(name))


def expect(name: str, text: str) -> int:
    return len(TokenCounter.encoding(name).encode_ordinary(text))


def assert_counts(bpe: CompactBPE, text: str, label: str = "") -> None:
    want = expect(bpe.name, text)
    got = (bpe.count(text), bpe.count(text))  # counted, then from the piece cache
    assert got == (want, want), f"{bpe.name} {label}: {got} != {want} for {text[:300]!r}"


# --- real files ------------------------------------------------------------------------------------


#: The shared recordings (and the design beside them) are outside the repository: missing on a clone
#: without ``../shared``, where the conformance suite's own rule applies (``test_conformance.py``).
MISSING = f"conformance folder not found at {CONFORMANCE} (set LLMQ_CONFORMANCE_DIR)"


def real_files() -> Iterator[object]:
    for path in sorted(p for p in CONFORMANCE.rglob("*") if p.is_file()):
        yield pytest.param(path, id=f"conformance/{path.relative_to(CONFORMANCE)}")
    design = [CONFORMANCE.parent / "DESIGN.md"] if (CONFORMANCE.parent / "DESIGN.md").is_file() else []
    for path in (REPO / "README.md", *design, *sorted((REPO / "docs").glob("*.md"))):
        yield pytest.param(path, id=path.name)
    for path in sorted((REPO / "workers" / "accounting").glob("*.py")):  # code
        yield pytest.param(path, id=f"code/{path.name}")


@pytest.mark.parametrize("path", list(real_files()))
def test_real_files_count_as_tiktoken_counts(bpe: CompactBPE, path: Path) -> None:
    assert_counts(bpe, path.read_bytes().decode("utf-8", "replace"), str(path))


def test_the_real_files_are_there() -> None:
    if not CONFORMANCE.is_dir():
        if os.environ.get("CI") == "true":  # CI counts against the recordings or fails, saying why
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING)
    assert len(list(CONFORMANCE.rglob("*.json"))) > 50  # not an empty parametrization


# --- random Unicode --------------------------------------------------------------------------------

#: (first, last) code points to draw from: scripts of many planes, marks, digits, spaces, emoji.
POOLS = [
    (0x20, 0x7E),  # ASCII
    (0xA0, 0x24F),  # Latin-1, Latin Extended
    (0x300, 0x36F),  # combining marks
    (0x370, 0x3FF),  # Greek
    (0x400, 0x4FF),  # Cyrillic
    (0x590, 0x6FF),  # Hebrew, Arabic (and Arabic-Indic digits)
    (0x900, 0x97F),  # Devanagari
    (0xE00, 0xE7F),  # Thai
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2000, 0x206F),  # general punctuation, odd spaces
    (0x3000, 0x30FF),  # CJK punctuation, kana
    (0x4E00, 0x9FFF),  # CJK
    (0xAC00, 0xD7A3),  # Hangul
    (0xFF00, 0xFFEF),  # full-width forms, full-width digits
    (0x1F300, 0x1FAFF),  # emoji
    (0x20000, 0x2A6DF),  # CJK Extension B
    (0x0, 0x10FFFF),  # anything
]
SPECIAL = [
    "'s",
    "'S",
    "'ſ",
    "'ll",
    "'RE",
    "K",
    "\u017f",
    "\r\n",
    "\n\n",
    "  ",
    "\t",
    "\x1c",
    "\x85",
    "\u2028",
    "\ufeff",
]


def random_text(rng: random.Random, length: int) -> str:
    out: list[str] = []
    while len(out) < length:
        if rng.random() < 0.1:
            out.append(rng.choice(SPECIAL))
            continue
        first, last = rng.choice(POOLS)
        for _ in range(rng.randint(1, 12)):
            cp = rng.randint(first, last)
            out.append(" " if 0xD800 <= cp <= 0xDFFF else chr(cp))
    return "".join(out)


@pytest.mark.parametrize("seed", range(40))
def test_random_unicode_counts_as_tiktoken_counts(bpe: CompactBPE, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(25):
        assert_counts(bpe, random_text(rng, rng.randint(1, 400)), f"seed {seed} text {i}")


def test_every_unicode_class_counts_as_tiktoken_counts_in_context(bpe: CompactBPE) -> None:
    """Every 61st code point and, of each run whose class the ``regex`` module disagrees with
    tiktoken's Unicode 16.0 on, its ends and every 16th, each in contexts that put it next to
    letters, digits, spaces and a suffix."""
    codes = set(range(0, 0x110000, 61))
    for first, last in divergent_ranges():
        codes.update((*range(first, last + 1, 16), last))
    codes -= set(range(0xD800, 0xE000))
    ordered = sorted(codes)
    for start in range(0, len(ordered), 256):
        block = "".join(
            f"a{c}b {c}{c} 1{c}2 {c}'s Z{c}z\n{c} \t{c}\r\n" for c in map(chr, ordered[start : start + 256])
        )
        assert_counts(bpe, block, f"code points {ordered[start]:#x}..")


def test_characters_newer_than_tiktokens_unicode_are_split_as_tiktoken_splits(bpe: CompactBPE) -> None:
    """Sidetic, Tai Yo, CJK Extension J (Unicode 17): unassigned for tiktoken (Unicode 16.0). The text
    is split again with Unicode 16.0's classes, and its pieces are not remembered."""
    for text in [
        "a\U00010940b",
        "\U000323b0\U000323b1 東京",
        "naïve\u0558 café",
        "x\u1acf\u1ad0y's",
        "\U0001e6c0'S 42",
    ]:
        assert_counts(bpe, text)
    diverging = [text for text in ["\U00010940", "\U000323b0", "\u1acf"] if bpe.pretokenizer.divergent(text)]
    assert all(text not in bpe._cache for text in diverging)


# --- runs, digits, code ----------------------------------------------------------------------------

RUNS = {
    **{f"spaces-{n}": " " * n for n in (1, 2, 3, 7, 64, 1023, 1024, 1025, 4000)},
    **{f"newlines-{n}": "\n" * n for n in (1, 2, 3, 50)},
    **{f"crlf-{n}": "\r\n" * n for n in (1, 2, 30)},
    **{f"tabs-{n}": "\t" * n for n in (1, 5, 100)},
    "mixed-ws": " \n \t\n\n  \r\n\t \u00a0\u3000 x \n",
    "spaces-then-word": "word" + " " * 9 + "word\n" + " " * 5 + "\n" + " " * 3,
    "trailing-spaces": "end.   ",
    "trailing-newline-spaces": "end.\n   \n",
    "indent": "def f():\n    if x:\n\t\treturn 1\n    \n",
    **{f"digits-{n}": "1234567890" * n for n in (1, 3, 50)},
    "numbers": "3.14159 1,000,000 -42 0x1F 1e-9 2026-12-07 12:30:05 +49 (0)30 123-4567",
    "digits-unicode": "٠١٢٣٤٥٦٧٨٩ ０１２３ ४२ ๓๔",
    "json": json.dumps({"tool": [1, 2.5, None, True], "nested": {"k": "v" * 30, "unicode": "é東"}}),
    "minified": "function(a,b){return a&&b?a.map(x=>x*2):[]};var s='it\\'s';",
    "c": '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }\n',
    "url": "https://example.com/a/b?c=d&e=f#g //// \\\\ ::: ...",
    "special-text": "before <|endoftext|> after <|fim_prefix|><|endofprompt|>",
    "suffixes": "it's IT'S dog'ſ we'll THEY'RE you've I'm he'd 'S'T'M",
    "surrogates": "a\ud800b \udc00 \ud83d\ude00 \ud83d x",
    "controls": "".join(map(chr, range(32))) + "\x7f\x85\u2028\u2029",
}


@pytest.mark.parametrize("text", RUNS.values(), ids=RUNS.keys())
def test_runs_digits_and_code_count_as_tiktoken_counts(bpe: CompactBPE, text: str) -> None:
    assert_counts(bpe, text)


# --- long pieces: the heap, the cuts, bounded.py's hostile texts ------------------------------------


def long_pieces() -> dict[str, str]:
    rng = random.Random(7)
    common = "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着"
    return {
        "letters-random": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3000)),
        "letters-upper": "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(2000)),
        "a": "a" * 3000,
        "ab": "ab" * 1500,
        "cjk-random": "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(2000)),
        "cjk-common": "".join(rng.choice(common) for _ in range(2000)),
        "hangul": "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(2000)),
        "cyrillic": "".join(chr(rng.randint(0x430, 0x44F)) for _ in range(2000)),
        "thai": "".join(chr(rng.randint(0xE01, 0xE4E)) for _ in range(2000)),
        "emoji": "".join(chr(rng.randint(0x1F300, 0x1F64F)) for _ in range(1000)),
        "cjk-ext-b": "".join(chr(rng.randint(0x20000, 0x2A6DF)) for _ in range(1000)),
        "marks": "e\u0301" * 1000,
        "mixed-scripts": "".join(rng.choice(["東", "京", "a", "é", "д", "한", "\u0301", "ß"]) for _ in range(3000)),
        "punctuation": "".join(rng.choice("!?.,;:-_=+*&^%$#@~`|<>[]{}()") for _ in range(3000)),
    }


@pytest.mark.parametrize("scan_max", [48, 1, 10_000], ids=["default", "heap-always", "scan-always"])
@pytest.mark.parametrize("label", list(long_pieces()))
def test_long_pieces_count_as_tiktoken_counts(name: str, label: str, scan_max: int) -> None:
    """One piece of thousands of bytes: merged from a heap (and cut where no token crosses), or
    scanned as tiktoken does; a tiny cache that keeps clearing changes nothing either."""
    text = long_pieces()[label]
    if scan_max > len(text):  # tiktoken's quadratic scan, in Python: shorter
        text = text[:600]
    bpe = CompactBPE(name, load_table(name), scan_max=scan_max, cache_pieces=3, cache_chars=64)
    assert_counts(bpe, text, label)


@pytest.mark.parametrize(
    "text",
    [" " * 1_000_000, "a" * 1_100_000, "東" * 300_000 + " word" * 1000, "a" * 3000 + "\u0000" + "x " * 5000],
    ids=["1M-spaces", "1.1M-a", "CJK-then-words", "a-nul-words"],
)
def test_bounded_counts_of_hostile_texts_are_tiktokens(name: str, text: str) -> None:
    """bounded.py's chunks and caps give the same count, and the same label, with either counter."""
    worker = TokenCounter(compact=True).lengths(name)
    assert isinstance(worker, CompactBPE)
    assert bounded_len(worker, [text]) == bounded_len(TiktokenLengths(TokenCounter.encoding(name)), [text])


def test_the_patterns_are_tiktokens(name: str) -> None:
    assert PATTERNS[name] == TokenCounter.encoding(name)._pat_str
