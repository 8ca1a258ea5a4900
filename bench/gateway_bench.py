"""Delta latency through the gateway vs a direct provider stream, same provider, same run.

Every token the provider sends carries the wall-clock time it left the provider
(``t<microseconds>``). A client measures, for every token it receives, receive time minus that
stamp, over ``--streams`` concurrent streams (500 by default), two ways, one after another:

* ``direct``  — client -> provider (OpenAI-compatible SSE), nothing in between: the baseline;
* ``gateway`` — client -> ``llmq gateway`` (``POST /v1/chat/completions``, stream) -> Redis ->
  ``llmq worker -P gevent`` -> provider, and back: provider -> worker (coalescing publisher) ->
  Redis Stream + pub/sub -> gateway (bounded queue, SSE writer) -> client.

Everything runs on this machine as separate processes: Redis, the stamping provider (aiohttp),
one gevent worker, one gateway, and the client (aiohttp, one process). It prints p50/p90/p99/max
per path and the gateway - direct difference.

    .venv/bin/python bench/gateway_bench.py [--streams 500] [--tokens 100] [--tokens-per-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llmq.devstack import LocalStack, wait_http  # noqa: E402
from llmq.localredis import free_port  # noqa: E402

TOKEN = "bench-token"
STAMP = re.compile(r"t(\d{16})")


# --- the stamping provider (run as a child process: gateway_bench.py --serve-provider PORT) --------


async def serve_provider(port: int, tokens_per_s: float) -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        count = int(body.get("max_tokens") or 100)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        gap = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        start = time.monotonic()
        base = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "bench",
        }
        for i in range(count):
            delay = start + i * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            text = f" t{int(time.time() * 1e6)}"
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": count + 5},
        }
        await response.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: " + json.dumps(usage).encode())
        await response.write(b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", lambda request: web.json_response({"ok": True}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# --- the measuring client --------------------------------------------------------------------------


class Recorder:
    """Per token: (sent by the provider, published by the worker or None, received by the client)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float | None, float]] = []
        self.spans: list[tuple[float, float]] = []
        self.first_tokens: list[float] = []

    def stream(self, sent: float) -> _StreamRecord:
        return _StreamRecord(self, sent)


class _StreamRecord:
    def __init__(self, recorder: Recorder, sent: float) -> None:
        self.recorder, self.sent, self.first, self.last = recorder, sent, None, None

    def tokens(self, text: str, now: float, published: float | None = None) -> None:
        for stamp in STAMP.findall(text):
            at = int(stamp) / 1e6
            if self.first is None:
                self.first = at
                self.recorder.first_tokens.append(time.monotonic() - self.sent)
            self.last = at
            self.recorder.samples.append((at, published, now))

    def close(self) -> None:
        if self.first is not None and self.last is not None:
            self.recorder.spans.append((self.first, self.last))


def _request(tokens: int) -> dict:
    return {
        "model": "openai:gpt-4o-mini",
        "stream": True,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "go"}],
    }


async def chat_stream(session, url: str, headers: dict[str, str], tokens: int, rec: Recorder) -> None:
    """An OpenAI streaming chat completion (the provider itself, or the gateway's endpoint)."""
    record = rec.stream(time.monotonic())
    async with session.post(url, json=_request(tokens), headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {await response.text()}")
        async for line in response.content:
            if line.startswith(b"data: {"):
                now = time.time()
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"stream error: {chunk['error']}")
                for choice in chunk.get("choices") or ():
                    record.tokens(choice["delta"].get("content") or "", now)
    record.close()


async def job_stream(session, base: str, headers: dict[str, str], tokens: int, rec: Recorder) -> None:
    """POST /v1/jobs then GET its events: every delta carries the time the worker published it."""
    record = rec.stream(time.monotonic())
    async with session.post(f"{base}/v1/jobs", json=_request(tokens), headers=headers) as response:
        job_id = (await response.json())["id"]
    async with session.get(f"{base}/v1/jobs/{job_id}/events", headers=headers) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                now = time.time()
                event = json.loads(line[6:])
                if event["type"] == "delta":
                    record.tokens(event["text"], now, event["ts"])
                elif event["type"] in ("error", "cancelled"):
                    raise RuntimeError(f"job ended {event['type']}")
    record.close()


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


def summarize(rec: Recorder, streams: int, tokens: int, errors: int, wall: float) -> dict[str, float]:
    # Only tokens sent while every stream was open count: streams start over some seconds (the
    # worker admits jobs one by one), and the ramp is not "N concurrent streams".
    full_from = max((a for a, _ in rec.spans), default=0.0)
    full_to = min((b for _, b in rec.spans), default=0.0)
    window = [(at, pub, now) for at, pub, now in rec.samples if full_from <= at <= full_to]
    total = sorted((now - at) * 1000 for at, _, now in window)
    everything = sorted((now - at) * 1000 for at, _, now in rec.samples)
    out = {
        "streams_ok": streams - errors,
        "tokens": len(rec.samples),
        "expected": streams * tokens,
        "window_tokens": len(total),
        "window_s": max(0.0, full_to - full_from),
        "p50_ms": _pct(total, 0.5),
        "p90_ms": _pct(total, 0.9),
        "p99_ms": _pct(total, 0.99),
        "max_ms": total[-1] if total else float("nan"),
        "mean_ms": statistics.fmean(total) if total else float("nan"),
        "all_p50_ms": _pct(everything, 0.5),
        "all_p99_ms": _pct(everything, 0.99),
        "wall_s": wall,
        "first_token_p50_s": _pct(sorted(rec.first_tokens), 0.5),
        "first_token_max_s": max(rec.first_tokens, default=float("nan")),
    }
    hops = [(pub - at, now - pub) for at, pub, now in window if pub is not None]
    if hops:
        worker = sorted(w * 1000 for w, _ in hops)
        edge = sorted(g * 1000 for _, g in hops)
        out |= {f"worker_p{p}_ms": _pct(worker, p / 100) for p in (50, 99)}
        out |= {f"edge_p{p}_ms": _pct(edge, p / 100) for p in (50, 99)}
    return out


async def run_client(kind: str, url: str, streams: int, tokens: int, headers: dict[str, str]) -> dict[str, float]:
    import aiohttp

    rec = Recorder()
    one = job_stream if kind == "jobs" else chat_stream
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(
            *(one(session, url, headers, tokens, rec) for _ in range(streams)), return_exceptions=True
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"  {kind}: {len(errors)} stream(s) failed, e.g. {errors[0]!r}", file=sys.stderr)
    return summarize(rec, streams, tokens, len(errors), time.monotonic() - started)


# --- orchestration ---------------------------------------------------------------------------------


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _cpu(proc: subprocess.Popen[bytes]) -> float:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        return sum(x.cpu_times().user + x.cpu_times().system for x in [p, *p.children(recursive=True)])
    except psutil.Error:
        return float("nan")


def _machine_cpu() -> float:
    import psutil

    times = psutil.cpu_times()
    return times.user + times.system + getattr(times, "nice", 0.0)


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _row(name: str, r: dict[str, float]) -> str:
    return (
        f"| {name} | {r['streams_ok']:.0f} | {r['tokens']:.0f}/{r['expected']:.0f} | "
        f"{r['window_tokens']:.0f} in {r['window_s']:.0f} s | {r['p50_ms']:.1f} | "
        f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['all_p50_ms']:.1f} / {r['all_p99_ms']:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    parser.add_argument("--tokens-per-s", type=float, default=20.0, help="provider pacing per stream")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (concurrency split between them)")
    parser.add_argument("--pool", choices=("gevent", "threads"), default="gevent")
    parser.add_argument("--coalesce-ms", type=float, default=None, help="worker coalescing window (default: its own)")
    parser.add_argument("--gateway-args", default="", help="extra llmq gateway arguments, e.g. '--hold-headers 0'")
    parser.add_argument("--paths", default="direct,chat,jobs", help="which paths to run, in order")
    parser.add_argument("--serve-provider", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_provider:
        asyncio.run(serve_provider(args.serve_provider, args.tokens_per_s))
        return 0

    with LocalStack() as stack:
        stack.start_redis()
        env = {**stack.env, "LLMQ_GATEWAY_TOKENS": f"{TOKEN}:bench"}
        if args.coalesce_ms is not None:
            env["LLMQ_COALESCE_MS"] = str(args.coalesce_ms)
        provider_port, gateway_port = free_port(), free_port()
        log_dir = stack.log_dir
        procs = []
        try:
            provider = _spawn(
                [
                    sys.executable,
                    __file__,
                    "--serve-provider",
                    str(provider_port),
                    "--tokens-per-s",
                    str(args.tokens_per_s),
                ],
                env,
                log_dir / "provider.log",
            )
            procs.append(provider)
            wait_http(f"http://127.0.0.1:{provider_port}/health", proc=provider)
            stack.env.update(env)
            provider_env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{provider_port}/v1", "OPENAI_API_KEY": "bench-local"}
            per_worker = -(-args.streams // args.workers)
            workers = [
                stack.start_worker(pool=args.pool, concurrency=per_worker, extra_env=provider_env)
                for _ in range(args.workers)
            ]
            stack.wait_for_workers(args.workers)
            gateway = _spawn(
                [
                    sys.executable,
                    "-m",
                    "llmq.cli",
                    "gateway",
                    "--port",
                    str(gateway_port),
                    "--log-level",
                    "warning",
                ],
                env,
                log_dir / "gateway.log",
            )
            procs.append(gateway)
            wait_http(f"http://127.0.0.1:{gateway_port}/healthz", proc=gateway)

            print(
                f"{args.streams} concurrent streams x {args.tokens} tokens at {args.tokens_per_s:g} tokens/s, "
                f"{args.workers} {args.pool} worker(s) (logs: {log_dir})"
            )
            auth = {"authorization": f"Bearer {TOKEN}"}
            gateway_url = f"http://127.0.0.1:{gateway_port}"
            targets = {
                "direct": ("chat", f"http://127.0.0.1:{provider_port}/v1/chat/completions", {}),
                "chat": ("chat", f"{gateway_url}/v1/chat/completions", auth),
                "jobs": ("jobs", gateway_url, auth),
            }
            measured = {"worker": workers, "gateway": [gateway], "provider": [provider]}
            if stack.redis is not None:
                measured["redis"] = [stack.redis.process]
            results: dict[str, dict[str, float]] = {}
            cpu: dict[str, dict[str, float]] = {}
            for run, path in enumerate(args.paths.split(",")):
                kind, url, headers = targets[path]
                if path in results:  # a repeated path gets its own row
                    path = f"{path}#{run + 1}"
                before = {name: sum(map(_cpu, ps)) for name, ps in measured.items()}
                client_before = _own_cpu()
                machine_before = _machine_cpu()
                results[path] = asyncio.run(run_client(kind, url, args.streams, args.tokens, headers))
                cpu[path] = {name: sum(map(_cpu, ps)) - before[name] for name, ps in measured.items()}
                cpu[path]["client"] = _own_cpu() - client_before
                # everything on the machine: CPU used by other programs disturbs the run
                cpu[path]["others"] = _machine_cpu() - machine_before - sum(cpu[path].values())
                cpu[path]["machine_capacity"] = results[path]["wall_s"] * (os.cpu_count() or 1)
        finally:
            for proc in reversed(procs):
                _stop(proc)

    names = {
        "direct": "direct: provider -> client",
        "chat": "gateway: POST /v1/chat/completions (provider -> worker -> Redis -> gateway -> client)",
        "jobs": "gateway: POST /v1/jobs + GET /v1/jobs/{id}/events (same path)",
    }
    print(
        "| path | streams ok | tokens received | measured (all streams open) | p50 ms | p90 ms | p99 ms | max ms "
        "| all tokens p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path, r in results.items():
        print(_row(names[path.split("#")[0]] + (f" (run {path.split('#')[1]})" if "#" in path else ""), r))
    print()
    base = results.get("direct")
    for path, r in results.items():
        line = f"{path}: first token p50 {r['first_token_p50_s']:.2f} s (last stream {r['first_token_max_s']:.2f} s), wall {r['wall_s']:.0f} s"
        if base is not None and not path.startswith("direct"):
            line += (
                f"; vs direct p50 {r['p50_ms'] - base['p50_ms']:+.1f} ms, p99 {r['p99_ms'] - base['p99_ms']:+.1f} ms"
            )
        if "worker_p50_ms" in r:
            line += (
                f"; per hop: provider -> worker published p50 {r['worker_p50_ms']:.1f} / p99 {r['worker_p99_ms']:.1f} ms,"
                f" published -> Redis -> gateway -> client p50 {r['edge_p50_ms']:.1f} / p99 {r['edge_p99_ms']:.1f} ms"
            )
        print(line)
        print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu[path].items()))
    print(json.dumps({"results": results, "cpu_s": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
