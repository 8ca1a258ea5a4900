"""What clients sent a private test Redis, logged with ``MONITOR`` (commands a Lua script runs are
left out: a script call is one command, one round trip or a share of one)."""

from __future__ import annotations

import threading
from types import TracebackType

import redis

__all__ = ["CommandLog"]

_STOP = "llmq-test-monitor-stop"


class CommandLog:
    """The commands clients send while open, each as its first words (name upper-cased, then up to
    three arguments: enough to tell a script call by its key count and first key)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._commands: list[tuple[str, ...]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-monitor", daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self._url)
        try:
            with client.monitor() as monitor:
                self._ready.set()
                for entry in monitor.listen():
                    command: str = entry["command"]
                    if _STOP in command:
                        return
                    if entry.get("client_type") == "lua":
                        continue
                    words = command.split(" ", 4)[:4]
                    with self._lock:
                        self._commands.append((words[0].upper(), *words[1:]))
        finally:
            client.close()

    @property
    def commands(self) -> list[tuple[str, ...]]:
        with self._lock:
            return list(self._commands)

    def count(self, name: str) -> int:
        """How many ``name`` commands were sent."""
        return sum(1 for c in self.commands if c[0] == name)

    def scripts(self, numkeys: int, first_key_suffix: str) -> int:
        """How many script calls (``EVALSHA``/``EVAL``) named ``numkeys`` keys, the first ending in ``first_key_suffix``."""
        return sum(
            1
            for c in self.commands
            if c[0] in ("EVALSHA", "EVAL") and len(c) >= 4 and c[2] == str(numkeys) and c[3].endswith(first_key_suffix)
        )

    def __enter__(self) -> CommandLog:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("MONITOR did not start")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        client = redis.Redis.from_url(self._url)
        try:
            client.echo(_STOP)
        finally:
            client.close()
        self._thread.join(10)
