"""The AWS libraries Bedrock needs, behind one small seam: SigV4 signing, the credential chain and
the event-stream decoder all come from ``botocore`` (the optional extra ``llmqueue[bedrock]``).

Nothing here imports botocore at import time: :func:`load_aws` does, once a Bedrock provider is
configured, and raises :class:`~workers.llm.errors.ConfigurationError` with one line naming the
provider and the extra when it is not installed. ``importer`` is the seam tests use to stand for
a machine without the extra.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from workers.llm.errors import ConfigurationError

__all__ = ["EXTRA", "AWSLibrary", "EventFrame", "FrameError", "load_aws"]

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


class AWSLibrary:
    """botocore's signer, credential chain and event-stream decoder, loaded once per process."""

    def __init__(self, modules: Mapping[str, ModuleType]) -> None:
        self._auth = modules["botocore.auth"]
        self._request = modules["botocore.awsrequest"]
        self._credentials = modules["botocore.credentials"]
        self._session = modules["botocore.session"]
        self._eventstream = modules["botocore.eventstream"]
        self._exceptions = modules["botocore.exceptions"]
        self._lock = threading.Lock()
        #: The credential chain's answer per profile (None: the default profile), resolved once.
        self._chains: dict[str | None, Any] = {}

    # --- credentials ------------------------------------------------------------------------------

    def static_credentials(self, access_key: str, secret_key: str, token: str | None = None) -> Any:
        return self._credentials.Credentials(access_key, secret_key, token)

    def default_credentials(self, profile: str | None = None) -> Any:
        """The standard AWS credential chain (environment, shared files, SSO, container, instance
        role), resolved once; refreshing credentials refresh themselves. None when it finds none."""
        with self._lock:
            if profile not in self._chains:
                self._chains[profile] = self._session.Session(profile=profile).get_credentials()
            return self._chains[profile]

    # --- signing ------------------------------------------------------------------------------------

    def sign(
        self, credentials: Any, *, region: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """``headers`` plus SigV4's ``authorization``, ``x-amz-date`` (and security token)."""
        frozen = credentials.get_frozen_credentials() if hasattr(credentials, "get_frozen_credentials") else credentials
        request = self._request.AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        self._auth.SigV4Auth(frozen, "bedrock", region).add_auth(request)
        return {k: v for k, v in request.headers.items()}

    # --- event stream ---------------------------------------------------------------------------------

    def frames(self, chunks: Iterable[bytes]) -> Iterator[EventFrame]:
        """Frames of an event stream whose bytes arrive in arbitrary pieces; every prelude and
        message CRC is checked (a mismatch raises :class:`FrameError`). Bytes left over at the end
        (a cut frame) raise too."""
        buffer = self._eventstream.EventStreamBuffer()
        try:
            for chunk in chunks:
                buffer.add_data(chunk)
                for message in buffer:
                    yield EventFrame(message.headers, message.payload)
        except self._eventstream.ParserError as exc:
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
    """botocore, or one clear line naming ``provider`` and the extra when it is missing."""
    global _loaded
    if importer is None and _loaded is not None:
        return _loaded
    load = importer or importlib.import_module
    try:
        modules = {name: load(name) for name in _MODULES}
    except ImportError:
        raise ConfigurationError(
            f"provider {provider!r} (type bedrock) needs the AWS libraries (botocore): {EXTRA}", provider=provider
        ) from None
    library = AWSLibrary(modules)
    if importer is None:
        with _load_lock:
            _loaded = _loaded or library
            return _loaded
    return library
