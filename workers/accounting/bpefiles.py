"""The bundled BPE files and the process-wide encodings: standard library and tiktoken only.

Kept apart from :mod:`workers.accounting.tokens` (which counts messages, so imports the contract and
pydantic) so that a worker can load its encodings before anything else is imported
(:func:`~workers.accounting.compactbpe.preload_compacted`, called by ``workers/runtime/launch.py``).
A bundled encoding is counted by :class:`~workers.accounting.compactbpe.CompactBPE` from a table
mapped from tiktoken's cache directory (~7 MB for ``o200k_base``); the first process on a host builds that table from the
bundled file, holding ~45 MB for a moment, which is why it is done while the process is small, and
what it leaves free is reused by the imports that follow. Any other encoding is tiktoken's, whose
loading holds its Python dict of merge ranks (~27 MB for ``o200k_base``) next to the Rust tokenizer
built from it (~43 MB) for a moment.

Offline: tiktoken downloads BPE files on first use. :func:`seed_tiktoken_cache` writes our bundled,
sha256-checked copies (``workers/accounting/data/*.tiktoken.gz``, byte-identical to OpenAI's) into
whatever cache directory tiktoken will read, before the first ``get_encoding``, so a worker without
network access counts tokens exactly as one with it. Nothing happens at import time.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "BUNDLED_ENCODINGS",
    "PRELOAD_ENV",
    "bundled_bpe",
    "compact_encoding",
    "release_free_heap",
    "seed_tiktoken_cache",
    "tiktoken_cache_dir",
    "write_cache_file",
]

_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
#: sha256 of the *decompressed* BPE files; the same hashes tiktoken itself checks.
BUNDLED_ENCODINGS: Mapping[str, str] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
#: The encodings ``llmq worker`` tells the worker process it execs to load first (comma-separated;
#: ``llmq/commands/worker.py`` works them out from the settings and the config, whose imports the
#: exec leaves behind). Unset: the worker loads them when it builds its resources, as before.
PRELOAD_ENV = "LLMQ_PRELOAD_ENCODINGS"

_seed_lock = threading.Lock()
_seeded_dirs: set[str] = set()


def tiktoken_cache_dir() -> str:
    """The directory tiktoken will read (same order as ``tiktoken.load.read_file_cached``)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _sha256_file(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _configuration_error(message: str) -> Exception:
    from workers.llm.errors import ConfigurationError  # the error tree imports the contract: only here

    return ConfigurationError(message)


def bundled_bpe(name: str) -> bytes:
    """The bundled BPE file of encoding ``name``, decompressed and sha256-checked (``KeyError`` for
    an encoding we do not bundle; ``ConfigurationError`` if the file fails its check)."""
    expected = BUNDLED_ENCODINGS[name]
    data = gzip.decompress((resources.files("workers.accounting") / "data" / f"{name}.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != expected:
        raise _configuration_error(f"bundled {name}.tiktoken.gz fails its sha256 check; reinstall llmqueue")
    return data


def seed_tiktoken_cache(names: Iterable[str] = BUNDLED_ENCODINGS, *, force: bool = False) -> list[str]:
    """Write bundled BPE files into tiktoken's cache where missing or corrupt.

    Returns the encodings written. Idempotent; after the first call per cache dir it returns at
    once unless ``force`` (then existing files are hash-checked again).
    Raises :class:`~workers.llm.errors.ConfigurationError` if a bundled file fails its hash check or
    the cache directory cannot be written (tiktoken would otherwise try the network, with no timeout).
    """
    cache = tiktoken_cache_dir()
    if cache == "":  # the user disabled tiktoken's cache; nothing we can seed
        return []
    written: list[str] = []
    with _seed_lock:
        if cache in _seeded_dirs and not force:
            return written
        for name in names:
            expected = BUNDLED_ENCODINGS[name]
            target = os.path.join(cache, hashlib.sha1(_URL.format(name).encode()).hexdigest())
            if _sha256_file(target) == expected:
                continue
            data = bundled_bpe(name)
            tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                os.makedirs(cache, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except OSError as exc:
                raise _configuration_error(
                    f"cannot seed tiktoken's cache at {cache!r} ({exc}); set TIKTOKEN_CACHE_DIR to a writable directory"
                ) from exc
            written.append(name)
        _seeded_dirs.add(cache)
    return written


def write_cache_file(path: str, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one, and one that
    mapped the old file keeps its pages); False if it cannot be written (the caller goes on without)."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True


def compact_encoding(enc: tiktoken.Encoding) -> None:
    """Drop the Python dict of merge ranks an encoding keeps beside its Rust tokenizer.

    ``tiktoken.Encoding`` hands the ranks (200,000 ``bytes -> int`` entries for ``o200k_base``,
    ~29 MB) to its Rust ``CoreBPE``, which keeps its own copy, and holds on to the Python one only to
    pickle itself (``__getstate__``). A worker never pickles an encoding (jobs are JSON), so it
    drops it; an encoding compacted here can no longer be pickled or rebuilt by ``tiktoken``'s
    educational module, and nothing in llmqueue does either. The registry's instance is shared
    in-process, which is why only the worker (a compacting ``TokenCounter``, ``preload_compacted``)
    calls this.
    """
    ranks = getattr(enc, "_mergeable_ranks", None)
    if isinstance(ranks, dict) and ranks:
        enc._mergeable_ranks = {}


def release_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Loading an encoding decodes its whole BPE file; what that leaves free stays in the process's
    resident set until something reuses it. Called after each compacted encoding loads."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_compacted(name: str) -> tiktoken.Encoding:
    """tiktoken's (process-wide) instance of encoding ``name``, loaded offline and compacted."""
    import tiktoken

    if name in BUNDLED_ENCODINGS:
        seed_tiktoken_cache()
    enc = tiktoken.get_encoding(name)
    if enc._mergeable_ranks:
        # at once, before another encoding loads: the next load reuses the heap this one left free,
        # so the process's peak holds one encoding's loading garbage
        compact_encoding(enc)
        release_free_heap()
    return enc
