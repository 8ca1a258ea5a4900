"""A network partition for tests: a network namespace joined to the host by a veth pair.

Processes started with :meth:`Partition.command` run inside the namespace and reach the host only
over the pair (``host_ip``; their own loopback is theirs). :meth:`Partition.cut` cuts the link, in one
of two ways (``down``: unreachable at once; ``blackhole``: packets silently dropped, connections
stall with no RST or FIN); :meth:`Partition.heal` brings it back and stalled connections carry on.

Needs root and iproute2 (``ip netns``): :func:`need_partition` skips without them, and fails under
``CI=true`` (``tests/support/external.py``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

from tests.support.external import missing

__all__ = ["Partition", "need_partition"]

#: A locally administered unicast MAC no interface has: frames sent to it are dropped by the peer.
NOBODY = "02:00:5e:10:00:01"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def need_partition() -> Partition:
    """A fresh (not yet created) :class:`Partition`, or skip (fail in CI) with the reason."""
    if shutil.which("ip") is None:
        missing("iproute2 (`ip`) not found (install: apt-get install iproute2)")
    if os.geteuid() != 0:
        missing("network namespaces need root (`ip netns add` is refused otherwise)")
    probe = f"llmqprobe{secrets.token_hex(3)}"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        missing(f"`ip netns add` does not work here: {added.stderr.strip()}")
    _ip("netns", "del", probe, check=False)
    return Partition()


class Partition:
    """One namespace and one veth pair, named uniquely (several runs may share the machine)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"llmq{tag}"
        self.host_if, self.ns_if = f"vh{tag}", f"vn{tag}"  # interface names: at most 15 characters
        octet = 16 + secrets.randbelow(200)
        self.host_ip, self.ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
        self.created = False
        self.mode = ""

    def create(self) -> Partition:
        _ip("netns", "add", self.ns)
        self.created = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        return self

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the PID is the program's)."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def cut(self, mode: str = "down") -> None:
        """``down``: the host end goes down; the namespace's packets to the host fail at once (no
        route to host), as when a host's link or switch port dies. ``blackhole``: both ends
        address each other's frames to a MAC that is nobody's (permanent neighbour entries), so
        every packet is silently dropped and TCP connections stall, as across a partitioned network."""
        if mode == "down":
            _ip("link", "set", self.host_if, "down")
        elif mode == "blackhole":
            _ip("neigh", "replace", self.ns_ip, "lladdr", NOBODY, "dev", self.host_if, "nud", "permanent")
            _ip(
                "-n", self.ns, "neigh", "replace", self.host_ip, "lladdr", NOBODY, "dev", self.ns_if, "nud", "permanent"
            )
        else:
            raise ValueError(f"unknown partition mode {mode!r}")
        self.mode = mode

    def heal(self) -> None:
        if self.mode == "down":
            _ip("link", "set", self.host_if, "up")
        elif self.mode == "blackhole":  # forget the bogus entries: ARP finds the real peers again
            _ip("neigh", "del", self.ns_ip, "dev", self.host_if, check=False)
            _ip("-n", self.ns, "neigh", "del", self.host_ip, "dev", self.ns_if, check=False)
        self.mode = ""

    def destroy(self) -> None:
        if self.created:
            _ip("link", "del", self.host_if, check=False)  # takes its peer with it
            _ip("netns", "del", self.ns, check=False)
            self.created = False

    def __enter__(self) -> Partition:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
