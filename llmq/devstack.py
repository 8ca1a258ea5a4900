"""A whole local stack as managed child processes: Redis, the simulator and worker(s).

Used by ``llmq demo``, the subprocess tests and the benchmarks. Every child runs in its own
process group and is stopped by PID (SIGTERM, then SIGKILL) when the stack closes, including on
Ctrl-C and SIGTERM of the parent, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from llmq.localredis import ManagedRedis, free_port, ping
from simulator.env import provider_config, provider_env
from workers.contract import DEFAULT_QUEUE

__all__ = ["LocalStack", "wait_http"]


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers any HTTP status."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            conn = http.client.HTTPConnection(parts.hostname or "localhost", parts.port, timeout=1)
            conn.request("GET", parts.path or "/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class LocalStack:
    """Start what is missing, remember what we started, stop exactly that."""

    def __init__(self, *, log_dir: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="llmq-stack-"))
        self.env = dict(os.environ if env is None else env)
        self.redis: ManagedRedis | None = None
        self.redis_url: str = ""
        self.simulator_url: str | None = None
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    # --- pieces ---------------------------------------------------------------------------------

    def start_redis(self) -> str:
        url = self.env.get("LLMQ_REDIS_URL")
        if url:
            if not ping(url):
                raise RuntimeError(f"LLMQ_REDIS_URL={url} does not answer PING")
            self.redis_url = url
        else:
            self.redis = ManagedRedis().start()
            self.redis_url = self.redis.url
        self.env["LLMQ_REDIS_URL"] = self.redis_url
        return self.redis_url

    def _spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**self.env, **(extra_env or {})}
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes.append((name, proc))
        return proc

    def start_simulator(
        self, *, latency: float = 0.0, tokens_per_s: float = 0.0, extra: list[str] | None = None
    ) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "llmq.cli", "simulate", "--port", str(port)]
        argv += ["--latency", str(latency), "--tokens-per-s", str(tokens_per_s), *(extra or [])]
        proc = self._spawn("simulator", argv)
        self.simulator_url = f"http://127.0.0.1:{port}"
        wait_http(self.simulator_url + "/health", proc=proc)
        return self.simulator_url

    def provider_env(self) -> dict[str, str]:
        """Point every provider at the simulator (when one runs): the built-ins by their variables,
        Azure, Gemini and Bedrock (when botocore is installed) by a config file of
        ``[providers.*]`` entries, unless ``LLMQ_CONFIG`` names one of the caller's own."""
        if not self.simulator_url:
            return {}
        env = provider_env(self.simulator_url)
        if not self.env.get("LLMQ_CONFIG"):
            path = self.log_dir / "simulated-providers.toml"
            bedrock = importlib.util.find_spec("botocore") is not None  # the optional AWS extra
            path.write_text(provider_config(self.simulator_url, bedrock=bedrock))
            env["LLMQ_CONFIG"] = str(path)
        return env

    def start_worker(
        self,
        *,
        pool: str = "threads",
        concurrency: int = 16,
        name: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        name = name or f"worker{sum(1 for n, _ in self.processes if n.startswith('worker')) + 1}"
        argv = [sys.executable, "-m", "llmq.cli", "worker", "--pool", pool, "--concurrency", str(concurrency)]
        argv += ["--hostname", f"{name}@%h", "--loglevel", "WARNING"]
        env = {**self.provider_env(), **(extra_env or {})}
        return self._spawn(name, argv, env)

    def start_gateway(
        self, *, tokens: str, extra_env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> tuple[subprocess.Popen[bytes], str]:
        """``llmq gateway`` on a free port with ``LLMQ_GATEWAY_TOKENS=tokens``; the process and its URL."""
        port = free_port()
        argv = [sys.executable, "-m", "llmq.cli", "gateway", "--port", str(port)]
        proc = self._spawn("gateway", argv, {"LLMQ_GATEWAY_TOKENS": tokens, **(extra_env or {})})
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", timeout=timeout, proc=proc)
        return proc, url

    def wait_for_workers(self, count: int = 1, timeout: float = 30.0) -> None:
        """Block until ``count`` workers answer a Celery ping."""
        from producers.client import make_celery

        app = make_celery(
            self.env.get("LLMQ_BROKER_URL") or self.redis_url, self.env.get("LLMQ_QUEUE") or DEFAULT_QUEUE
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for name, proc in self.processes:
                    if name.startswith("worker") and proc.poll() is not None:
                        tail = (self.log_dir / f"{name}.log").read_text()[-2000:]
                        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
                replies = app.control.ping(timeout=0.5) or []
                if len(replies) >= count:
                    return
            raise RuntimeError(f"{count} worker(s) did not come up within {timeout}s (logs in {self.log_dir})")
        finally:
            app.close()

    # --- lifecycle --------------------------------------------------------------------------------

    def stop(self) -> None:
        for _, proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.processes):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.processes.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C inside the block, so ``finally`` clauses clean up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
