"""The LiteLLM Router baseline: runs in the bench's scratch virtualenv, never in the project's.

``queue_bench.py`` installs LiteLLM into a virtualenv under a cache directory and runs this script
with that virtualenv's Python. It mirrors the shared peer harness
(``notes/peer-bench/litellm/bench_litellm.py``, variant ``router``): a ``litellm.Router`` with two
deployments of the same OpenAI-compatible upstream (here: our simulator), ``num_retries=2`` and a
fallback from the first to the second, ``router.acompletion(..., stream=True)`` under an
``asyncio.Semaphore(concurrency)``, every chunk consumed, 10 unmeasured warm-up calls. Telemetry,
callbacks and the remote cost-map fetch are off, and every non-loopback DNS lookup or connect is
refused and counted (``nonlocal_attempts``, expected 0). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import self_cpu_s, self_peak_rss_mb

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def install_network_guard() -> list[tuple[str, str]]:
    """Refuse (and count) every DNS lookup or connect to anything but loopback."""
    attempts: list[tuple[str, str]] = []
    real_gai = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def gai(host, *a, **kw):  # type: ignore[no-untyped-def]
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and h not in LOOPBACK:
            attempts.append(("getaddrinfo", str(h)))
            raise socket.gaierror(socket.EAI_NONAME, f"blocked by bench network guard: {h}")
        return real_gai(host, *a, **kw)

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            if address[0] not in LOOPBACK:
                attempts.append(("connect", str(address[0])))
                raise OSError(101, f"blocked by bench network guard: {address[0]}")

    def connect(self, address):  # type: ignore[no-untyped-def]
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):  # type: ignore[no-untyped-def]
        check(self, address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = gai  # type: ignore[assignment]
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    return attempts


def main(args: argparse.Namespace) -> None:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_TELEMETRY"] = "False"
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    attempts = install_network_guard()
    import litellm

    litellm.telemetry = False
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm._async_success_callback = []
    litellm._async_failure_callback = []
    litellm.callbacks = []
    litellm.suppress_debug_info = True
    litellm.set_verbose = False

    def deployment(name: str) -> dict[str, object]:
        params = {"model": "openai/gpt-4o-mini", "api_base": args.base_url, "api_key": "sk-bench", "timeout": 120}
        return {"model_name": name, "litellm_params": params}

    router = litellm.Router(
        model_list=[deployment("bench-primary"), deployment("bench-fallback")],
        num_retries=2,
        fallbacks=[{"bench-primary": ["bench-fallback"]}],
        retry_after=0,
        set_verbose=False,
    )
    errors: dict[str, int] = {}
    deltas: list[int] = []

    async def one(sem: asyncio.Semaphore, i: int) -> None:
        async with sem:
            try:
                n = 0
                resp = await router.acompletion(
                    model="bench-primary",
                    messages=[{"role": "user", "content": f"peer {i}"}],
                    max_tokens=64,
                    stream=True,
                )
                async for chunk in resp:
                    if chunk.choices and chunk.choices[0].delta.content:
                        n += 1
                deltas.append(n)
            except Exception as exc:  # counted, reported
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    async def run() -> dict[str, object]:
        wsem = asyncio.Semaphore(10)
        await asyncio.gather(*(one(wsem, -i - 1) for i in range(10)))  # warm-up, not measured
        deltas.clear()
        errors.clear()
        sem = asyncio.Semaphore(args.concurrency)
        cpu0 = self_cpu_s()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(sem, i) for i in range(args.jobs)))
        wall = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # deferred logging / cost tasks finish inside the measurement
        cpu = self_cpu_s() - cpu0
        return {
            "ok": len(deltas),
            "errors": errors,
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_rss_mb": self_peak_rss_mb(),
            "deltas_per_job": round(sum(deltas) / len(deltas), 2) if deltas else 0,
            "nonlocal_attempts": len(attempts),
            "litellm_version": _version(),
        }

    print(json.dumps(asyncio.run(run())), flush=True)


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("litellm")
    except Exception:
        return None


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=200)
    main(p.parse_args())
