"""Load the simulator with many concurrent streams and report its CPU per token.

``python -m simulator.loadtest --connections 500 --tokens 20 --tokens-per-s 20`` starts a
``llmq simulate`` subprocess, opens N keep-alive connections (raw asyncio sockets, so the client
stays cheap), sends R streaming requests on each, checks one reply per round with
:mod:`simulator.wire`, and prints the server's CPU time (user + system, from ``/proc`` via
psutil) per streamed token. Run it on an otherwise idle machine: the figure includes the
per-request work (parsing, headers) spread over the tokens of each answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from typing import Any

import psutil

from simulator.wire import parse_reply

__all__ = ["main"]

_BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": (
        "/v1/chat/completions",
        {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}},
    ),
    "anthropic": ("/v1/messages", {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 100_000}),
    "ollama": ("/api/chat", {"model": "llama3.1"}),
}
_END = b"0\r\n\r\n"


def _request(protocol: str) -> bytes:
    path, body = _BODIES[protocol]
    payload = json.dumps({**body, "messages": [{"role": "user", "content": "load test"}]}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n"
        f"anthropic-version: 2023-06-01\r\ncontent-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _connection(port: int, request: bytes, count: int, keep: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(request)
            parts: list[bytes] = []
            tail = b""
            while tail != _END:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("the simulator closed the connection")
                if not keep:
                    parts.append(chunk)
                tail = (tail + chunk)[-5:]
            if parts and not keep:
                keep.append(b"".join(parts))
    finally:
        writer.close()


async def _round(port: int, request: bytes, connections: int, per_connection: int) -> tuple[float, bytes]:
    keep: list[bytes] = []
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, request, per_connection, keep) for _ in range(connections)))
    return time.perf_counter() - started, keep[0]


def _check(protocol: str, raw: bytes, tokens: int) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    chunks, data = body, b""
    while chunks:  # undo the chunked framing
        size_line, _, rest = chunks.partition(b"\r\n")
        size = int(size_line, 16)
        data, chunks = data + rest[:size], rest[size + 2 :]
        if size == 0:
            break
    reply = parse_reply(protocol, True, 200, {}, data)
    if not reply.terminated or reply.completion_tokens not in (tokens, None) or not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected reply: {raw[:300]!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulator.loadtest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=sorted(_BODIES), default="openai")
    ap.add_argument("--connections", "-n", type=int, default=500)
    ap.add_argument("--requests-per-connection", "-r", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--tokens-per-s", type=float, default=0.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llmq.cli", "simulate", "--port", str(port)]
    cmd += ["--completion-tokens", str(args.tokens), "--tokens-per-s", str(args.tokens_per_s)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if "listening" not in server.stdout.readline():
            raise SystemExit("the simulator did not start")
        request = _request(args.protocol)
        proc = psutil.Process(server.pid)
        asyncio.run(_round(port, request, min(50, args.connections), 1))  # warm up
        results = []
        for _ in range(args.rounds):
            before = proc.cpu_times()
            wall, sample = asyncio.run(_round(port, request, args.connections, args.requests_per_connection))
            after = proc.cpu_times()
            _check(args.protocol, sample, args.tokens)
            cpu = (after.user - before.user) + (after.system - before.system)
            results.append((cpu / (args.connections * args.requests_per_connection * args.tokens) * 1e6, cpu, wall))
        best = min(results)
        print(
            f"{args.protocol}: {args.connections} connections x {args.requests_per_connection} streams of "
            f"{args.tokens} tokens at {args.tokens_per_s or 'unpaced'} tok/s: server CPU {best[0]:.1f} us/token "
            f"(best of {args.rounds}: cpu {best[1]:.2f} s, wall {best[2]:.2f} s; all {[round(r[0], 1) for r in results]})"
        )
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
