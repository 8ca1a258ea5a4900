"""The AWS libraries Bedrock needs, behind one small seam: SigV4 signing, the credential chain and
the event-stream decoder all come from ``botocore`` (the optional extra ``llmqueue[bedrock]``).

Nothing here imports botocore at import time, nor when a Bedrock provider is configured: :func:`load_aws`
checks then that it is installed (one :class:`~workers.llm.errors.ConfigurationError` line naming the
provider and the extra when it is not), and each botocore module is imported on its first use (the
first signed call, the first event stream): ~7 MB and ~130 modules that a worker whose jobs never go
to Bedrock does not hold. Keys given outright (the environment's) are held by
:class:`StaticCredentials`, without botocore. ``importer`` is the seam tests use to stand for a
machine without the extra (the modules it returns are imported at once).
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from workers.llm.errors import ConfigurationError

__all__ = ["EXTRA", "AWSLibrary", "EventFrame", "FrameError", "StaticCredentials", "load_aws"]

#: How the extra is installed, named in the start-up error.
EXTRA = "pip install 'llmqueue[bedrock]'"

Importer = Callable[[str], ModuleType]


class FrameError(ValueError):
    """An event-stream frame failed its checks (a CRC, a length): the stream is broken."""


@dataclass(frozen=True, slots=True)
class EventFrame:
    """One decoded ``application/vnd.amazon.eventstream`` frame."""

    headers: Mapping[str, Any]
    payload: bytes


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """Keys given outright, as botocore's signer reads them (``access_key``, ``secret_key``, ``token``
    of ``get_frozen_credentials()``), held without importing botocore. The secret is not in the repr."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    def get_frozen_credentials(self) -> StaticCredentials:
        return self


class AWSLibrary:
    """botocore's signer, credential chain and event-stream decoder, each module imported on first use
    (``modules``: already imported ones, e.g. through a test's importer)."""

    def __init__(self, modules: Mapping[str, ModuleType] | None = None) -> None:
        self._modules: dict[str, ModuleType] = dict(modules or {})
        self._lock = threading.Lock()
        #: The credential chain's answer per profile (None: the default profile), resolved once.
        self._chains: dict[str | None, Any] = {}

    def _module(self, name: str) -> ModuleType:
        module = self._modules.get(name)
        if module is None:  # imports are serialized by Python's import lock; the dict write is atomic
            module = self._modules[name] = importlib.import_module(name)
        return module

    # --- credentials ------------------------------------------------------------------------------

    def static_credentials(self, access_key: str, secret_key: str, token: str | None = None) -> StaticCredentials:
        return StaticCredentials(access_key, secret_key, token)

    def default_credentials(self, profile: str | None = None) -> Any:
        """The standard AWS credential chain (environment, shared files, SSO, container, instance
        role), resolved once; refreshing credentials refresh themselves. None when it finds none."""
        with self._lock:
            if profile not in self._chains:
                self._chains[profile] = self._module("botocore.session").Session(profile=profile).get_credentials()
            return self._chains[profile]

    # --- signing ------------------------------------------------------------------------------------

    def sign(
        self, credentials: Any, *, region: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """``headers`` plus SigV4's ``authorization``, ``x-amz-date`` (and security token)."""
        frozen = credentials.get_frozen_credentials() if hasattr(credentials, "get_frozen_credentials") else credentials
        request = self._module("botocore.awsrequest").AWSRequest(
            method="POST", url=url, data=body, headers=dict(headers)
        )
        self._module("botocore.auth").SigV4Auth(frozen, "bedrock", region).add_auth(request)
        return {k: v for k, v in request.headers.items()}

    # --- event stream ---------------------------------------------------------------------------------

    def frames(self, chunks: Iterable[bytes]) -> Iterator[EventFrame]:
        """Frames of an event stream whose bytes arrive in arbitrary pieces; every prelude and
        message CRC is checked (a mismatch raises :class:`FrameError`). Bytes left over at the end
        (a cut frame) raise too."""
        eventstream = self._module("botocore.eventstream")
        buffer = eventstream.EventStreamBuffer()
        try:
            for chunk in chunks:
                buffer.add_data(chunk)
                for message in buffer:
                    yield EventFrame(message.headers, message.payload)
        except eventstream.ParserError as exc:
            raise FrameError(f"{type(exc).__name__}: {exc}") from None
        left = getattr(buffer, "_data", b"")
        if left:
            raise FrameError(f"the stream ended inside a frame ({len(left)} bytes left)")


_MODULES = (
    "botocore.auth",
    "botocore.awsrequest",
    "botocore.credentials",
    "botocore.session",
    "botocore.eventstream",
    "botocore.exceptions",
)
_loaded: AWSLibrary | None = None
_load_lock = threading.Lock()


def load_aws(provider: str, *, importer: Importer | None = None) -> AWSLibrary:
    """botocore (imported on first use), or one clear line naming ``provider`` and the extra when it
    is missing."""
    global _loaded
    if importer is None and _loaded is not None:
        return _loaded
    missing = ConfigurationError(
        f"provider {provider!r} (type bedrock) needs the AWS libraries (botocore): {EXTRA}", provider=provider
    )
    if importer is None:
        if importlib.util.find_spec("botocore") is None:  # installed? without importing it
            raise missing
        library = AWSLibrary()
    else:
        try:
            library = AWSLibrary({name: importer(name) for name in _MODULES})
        except ImportError:
            raise missing from None
    if importer is None:
        with _load_lock:
            _loaded = _loaded or library
            return _loaded
    return library
