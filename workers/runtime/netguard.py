"""Outbound connections to addresses users choose (webhook URLs), refused for internal networks.

A webhook URL comes from a job; without a guard, anyone who can submit a job could make the
workers POST to services inside the network (a cloud metadata endpoint, an admin port on
loopback). The guard resolves the name itself, keeps only addresses outside loopback, private,
link-local, shared, multicast and reserved ranges (unless a configured network allows them), and
connects to exactly such an address, then checks the address the socket is connected to again.
There is no second lookup between the check and the connection (DNS rebinding), no proxy, and
redirects are not followed by the caller.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BlockedAddressError", "GuardedHTTPConnection", "NetGuard", "tls_context"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddressError(OSError):
    """The name resolves only to addresses the guard refuses (or the connected peer is one)."""


Resolver = Callable[..., list[tuple[Any, ...]]]


class NetGuard:
    """``allow``: networks reachable although internal. ``resolver``: ``socket.getaddrinfo`` (a seam
    for tests: names that resolve to internal addresses without touching the machine's DNS)."""

    def __init__(self, allow: Sequence[str] = (), *, resolver: Resolver = socket.getaddrinfo) -> None:
        self.allow: list[IPNetwork] = [ipaddress.ip_network(net, strict=False) for net in allow]
        self._resolver = resolver

    def blocked(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address):
            # an IPv4 address inside (mapped, or 6to4: 2002:0a00:0001:: reaches 10.0.0.1 through a
            # relay) is judged as that address
            address = address.ipv4_mapped or address.sixtofour or address
        if any(address in net for net in self.allow):
            return False
        return (
            address.is_loopback
            or address.is_private
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
            or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)
        )

    def resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        """``(family, address)`` of every address of ``host`` the guard allows; raises when there is none."""
        infos = self._resolver(host, port, type=socket.SOCK_STREAM)
        allowed: list[tuple[int, str]] = []
        refused: list[tuple[int, str]] = []
        for family, _, _, _, sockaddr in infos:
            text = str(sockaddr[0]).split("%", 1)[0]
            (refused if self.blocked(ipaddress.ip_address(text)) else allowed).append((family, text))
        if not allowed:
            shown = ", ".join(sorted({a for _, a in refused})) or "nothing"
            raise BlockedAddressError(
                f"{host} resolves to {shown}: loopback, private or link-local addresses are refused "
                "(allow a network with [webhooks] allow_networks or LLMQ_WEBHOOK_ALLOW_NETWORKS)"
            )
        return list(dict.fromkeys(allowed))

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A TCP connection to an allowed address of ``host`` (tried in order)."""
        last: OSError | None = None
        for family, address in self.resolve(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect((address, port))
                peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
                if self.blocked(peer):
                    raise BlockedAddressError(f"connected to {peer}, which is refused")
                return sock
            except OSError as exc:
                sock.close()
                if isinstance(exc, BlockedAddressError):
                    raise
                last = exc
        raise last or OSError(f"could not connect to {host}:{port}")


#: 100.64.0.0/10 (carrier-grade NAT), which Python does not count as private.
_SHARED = ipaddress.ip_network("100.64.0.0/10")


_tls_context: ssl.SSLContext | None = None
_tls_lock = threading.Lock()


def tls_context() -> ssl.SSLContext:
    """The default TLS context (certificates verified, host names checked), built once per process
    and shared by every connection: building one loads the system's CA certificates, ~30 ms of CPU,
    which was 9x a whole job's CPU for each webhook attempt (``bench/webhook_cost_bench.py``)."""
    global _tls_context
    context = _tls_context
    if context is None:
        with _tls_lock:
            if _tls_context is None:
                _tls_context = ssl.create_default_context()
            context = _tls_context
    return context


class GuardedHTTPConnection(http.client.HTTPSConnection):
    """``http.client`` over :meth:`NetGuard.connect` (TLS with the URL's host name when ``tls``)."""

    def __init__(self, host: str, port: int, *, guard: NetGuard, timeout: float, tls: bool) -> None:
        # http.client builds a default context (CA certificates loaded) for every connection given
        # none, plain http included: the shared one instead
        super().__init__(host, port, timeout=timeout, context=tls_context())
        self._guard = guard
        self._tls = tls
        #: The address connected to (for the delivery log).
        self.address: str | None = None
        self._raw: socket.socket | None = None
        #: Whether :meth:`abort` ended the exchange (what the reader's error then means).
        self.aborted = False

    def connect(self) -> None:
        sock = self._guard.connect(self.host, self.port, self.timeout or 10.0)
        self._raw = sock
        if self.aborted:  # the deadline passed while connecting
            self.abort()
        self.address = str(sock.getpeername()[0])
        if self._tls:
            sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
        self.sock = sock

    def abort(self) -> None:
        """End the exchange from another thread: whatever waits on the socket sees its end at once
        (the TCP socket is shut down under any TLS layer, which is left to the reader to close)."""
        self.aborted = True
        raw = self._raw
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
