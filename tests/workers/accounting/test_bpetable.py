"""The compact tables' cache beside tiktoken's: built offline from the bundled files, checked at load,
rebuilt when corrupt or stale; and the Unicode divergence list cached the same way."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workers.accounting import bpetable, pretokenize
from workers.accounting.bpefiles import BUNDLED_ENCODINGS, bundled_bpe
from workers.accounting.bpetable import FORMAT_VERSION, NO_RANK, build_table, load_table, table_path
from workers.accounting.compactbpe import CompactBPE
from workers.accounting.tokens import TokenCounter

REPO = Path(__file__).resolve().parents[3]
URL = "https://openaipublic.blob.core.windows.net/encodings"
TEXT = "naïve café 東京 🎉 it's 1234567 tokens\n\n  indented"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", BUNDLED_ENCODINGS)
def test_a_table_is_built_once_then_read_from_the_cache(cache: Path, name: str) -> None:
    built = load_table(name)
    assert built.source == "built" and Path(str(table_path(name))).parent == cache
    read = load_table(name)
    assert read.source == "cache"
    assert (read.tokens, read.max_len) == (built.tokens, built.max_len) == (len(bundled_bpe(name).splitlines()), 128)
    assert read.rank(b"!") == 0 and read.rank(b"hello") == built.rank(b"hello") != NO_RANK
    assert read.rank(b"\x00no such token\x00") == NO_RANK
    want = len(TokenCounter.encoding(name).encode_ordinary(TEXT))
    assert CompactBPE(name, read).count(TEXT) == CompactBPE(name, built).count(TEXT) == want


def corrupt_payload(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern in the slots, pairs, offsets or blob
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1000])


def stale_version(path: Path) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("=I", data, 8, FORMAT_VERSION + 1)  # the version, after the 8-byte magic
    path.write_bytes(bytes(data))


def stale_bpe_file(path: Path) -> None:  # a table built from another BPE file (its sha256 in the header)
    path.write_bytes(build_table(bundled_bpe("cl100k_base"), BUNDLED_ENCODINGS["cl100k_base"]))


def garbage(path: Path) -> None:
    path.write_bytes(b"not a table")


@pytest.mark.parametrize("spoil", [corrupt_payload, truncate, stale_version, stale_bpe_file, garbage])
def test_a_corrupt_or_stale_cached_table_is_rebuilt(cache: Path, spoil: object) -> None:
    name = "o200k_base"
    want = len(TokenCounter.encoding(name).encode_ordinary(TEXT))
    load_table(name)
    path = Path(str(table_path(name)))
    spoil(path)  # type: ignore[operator]
    again = load_table(name)
    assert again.source == "built"  # detected: rebuilt and written back
    assert CompactBPE(name, again).count(TEXT) == want
    assert load_table(name).source == "cache"


def test_a_disabled_or_unwritable_cache_keeps_the_table_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = len(TokenCounter.encoding("cl100k_base").encode_ordinary(TEXT))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert table_path("cl100k_base") is None and load_table("cl100k_base").source == "memory"
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
    table = load_table("cl100k_base")
    assert table.source == "memory"
    assert CompactBPE("cl100k_base", table).count(TEXT) == want


def test_the_divergence_list_is_cached_and_a_corrupt_one_worked_out_again(cache: Path) -> None:
    pretokenize.divergent_ranges.cache_clear()
    try:
        first = pretokenize.divergent_ranges()
        [path] = cache.glob("llmq-unicode-16.0.0-regex-*.txt")
        assert path.read_text().startswith("llmq-divergent 1 unicode=16.0.0 regex=")
        header, _, body = path.read_text().partition("\n")
        path.write_text(f"{header}\n{body.replace('-', '+', 3)}")  # a damaged body under a good header
        pretokenize.divergent_ranges.cache_clear()
        assert pretokenize.divergent_ranges() == first  # the crc caught it: worked out again
        assert "+" not in path.read_text()
    finally:
        pretokenize.divergent_ranges.cache_clear()


OFFLINE_WORKER_COUNT = textwrap.dedent(
    """
    import socket, sys
    import tiktoken.load

    def no_network(*args, **kwargs):
        raise RuntimeError("network access attempted")

    tiktoken.load.read_file = no_network
    socket.socket.connect = no_network
    from workers.accounting.compactbpe import preload_compacted
    from workers.accounting.tokens import TokenCounter
    from workers.contract import Message

    print(preload_compacted(["o200k_base"]))
    counter = TokenCounter(compact=True)
    for model in ("openai:gpt-4o", "openai:gpt-4"):
        print(counter.count(model, [Message(role="user", content="hello offline world")]).tokens)
    """
)


def test_the_worker_counter_builds_its_tables_offline_from_the_bundled_files(tmp_path: Path) -> None:
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    env.pop("DATA_GYM_CACHE_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_WORKER_COUNT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["['o200k_base']", "10", "10"]
    written = {p.name for p in tmp_path.iterdir()}
    assert {"llmq-o200k_base.bpetable", "llmq-cl100k_base.bpetable"} <= written
    tiktoken_files = {hashlib.sha1(f"{URL}/{n}.tiktoken".encode()).hexdigest() for n in BUNDLED_ENCODINGS}
    assert not written & tiktoken_files  # tiktoken's cache was not needed


def test_the_table_format_is_what_the_module_says() -> None:
    """The layout the corruption tests above rely on: magic, then the version."""
    assert bpetable._MAGIC == b"LLMQBPE\x00" and bpetable._HEADER.format.startswith("=8s")
