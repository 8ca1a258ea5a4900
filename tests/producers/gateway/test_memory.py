"""Fifty slow SSE readers on fast jobs: the gateway process's memory stays bounded.

The gateway runs as ``llmq gateway`` in its own process, so its RSS is measured alone (psutil).
The jobs' events are published through the worker's own :class:`EventPublisher` (the real wire
path: XADD to the replay Stream + PUBLISH, one Lua script) far faster than the clients read:
~100 MB of events against clients that read ~10 kB/s each. A gateway that buffered for its
clients would grow by about that much; the bounded queue (16 events) plus catching up from the
replay Stream keeps the growth to a few MB. At the end the clients read fast and must each get
every event, in seq order, ending with ``done``: nothing was dropped to stay small.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest
import redis

from llmq.devstack import wait_http
from llmq.localredis import free_port
from producers import Client
from producers.gateway.sse import SSEParser
from workers.contract import CompletionResult, DeltaEvent, DoneEvent, JobKeys, StartEvent
from workers.jobs.events import EventPublisher

TOKEN = "mem-token-8e2d4a"
CLIENTS = 50
DELTAS = 1000
DELTA_CHARS = 2000
#: RSS growth allowed while ~100 MB flow past 50 slow clients (measured: a few MB).
MAX_GROWTH = 40 * 1024 * 1024
#: Events per publish round trip (the worker batches the same way when it flushes several at once).
_BATCH = 20


@pytest.fixture
def gateway_process(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url, "LLMQ_GATEWAY_TOKENS": f"{TOKEN}:mem"}
    env.pop("LLMQ_CONFIG", None)
    argv = [sys.executable, "-m", "llmq.cli", "gateway", "--port", str(port), "--write-timeout", "120"]
    # A pinned kernel send buffer, as on a real network (loopback autotunes it to megabytes, which
    # would hold each client's whole stream in the kernel and never make the gateway wait).
    argv += ["--sndbuf", "65536", "--log-level", "warning"]
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc=proc)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class SlowReader(threading.Thread):
    """A raw SSE client: ~10 kB/s while ``slow`` is set, as fast as it can after."""

    def __init__(self, port: int, job_id: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(60)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(
            b"GET /v1/jobs/%s/events HTTP/1.0\r\nHost: llmq\r\nAuthorization: Bearer %s\r\n\r\n"
            % (job_id.encode(), TOKEN.encode())
        )
        self.slow = threading.Event()
        self.slow.set()
        self.seqs: list[int] = []
        self.last_event: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        parser, head = SSEParser(), b""
        try:
            while b"\r\n\r\n" not in head:
                head += self.sock.recv(1024)
            head, _, body = head.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            chunk = body
            while True:
                for id_, name, _ in parser.feed(chunk):
                    self.seqs.append(int(id_ or -1))
                    self.last_event = name
                if self.last_event == "done":
                    return
                if self.slow.is_set():
                    time.sleep(0.1)
                    chunk = self.sock.recv(1024)
                else:
                    chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.sock.close()


def _publish(redis_url: str, job_ids: list[str]) -> int:
    """Start, DELTAS deltas and done for every job, interleaved; returns the bytes published."""
    r = redis.Redis.from_url(redis_url)
    publishers = []
    for job_id in job_ids:
        pub = EventPublisher(r, JobKeys(job_id), run=1, start_seq=-1)
        pub.emit(StartEvent(job_id=job_id, seq=0, model="openai:gpt-4o-mini"))
        publishers.append(pub)
    total = 0
    for first in range(0, DELTAS, _BATCH):
        texts = [f"{i:06d} " + "x" * (DELTA_CHARS - 7) for i in range(first, min(first + _BATCH, DELTAS))]
        for job_id, pub in zip(job_ids, publishers, strict=True):
            pub.emit_many([DeltaEvent(job_id=job_id, seq=0, text=text) for text in texts])  # one round trip
            total += sum(map(len, texts))
    for job_id, pub in zip(job_ids, publishers, strict=True):
        result = CompletionResult(id=job_id, status="succeeded", tenant="mem")
        pub.emit(DoneEvent(job_id=job_id, seq=0, result=result))
    r.close()
    return total


def test_slow_readers_keep_gateway_memory_bounded(redis_url: str, gateway_process: tuple[str, psutil.Process]) -> None:
    url, proc = gateway_process
    port = int(url.rsplit(":", 1)[1])
    with Client(redis_url, queue="gateway-memory-test") as client:  # no worker: the test is the producer
        job_ids = [
            client.submit(
                {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "m"}]}, tenant="mem"
            ).id
            for _ in range(CLIENTS)
        ]
    readers = [SlowReader(port, job_id) for job_id in job_ids]
    for reader in readers:
        reader.start()
    time.sleep(1.0)  # every client subscribed and idle
    baseline = proc.memory_info().rss

    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        published = _publish(redis_url, job_ids)
        time.sleep(3.0)  # the slow clients keep reading; the gateway keeps catching up for them
    finally:
        stop.set()
        sampler.join()
    growth = peak - baseline
    read_slowly = sum(len(r.seqs) for r in readers) * DELTA_CHARS
    assert published >= 90 * 1024 * 1024 and read_slowly < published / 4, (published, read_slowly)
    assert growth < MAX_GROWTH, f"gateway RSS grew {growth / 1e6:.1f} MB while {published / 1e6:.0f} MB flowed"

    metrics = httpx2.get(f"{url}/metrics").text
    catchups = next(
        float(line.split()[1]) for line in metrics.splitlines() if line.startswith("llmq_gateway_sse_catchups_total")
    )
    observed = next(
        float(line.split()[1]) for line in metrics.splitlines() if line.startswith("llmq_gateway_sse_queue_depth_count")
    )
    # every client fell behind (a catch-up from the replay Stream happens only when its bounded
    # queue was full) and the queue depth was observed at the writes; how deep the queue was at
    # the moment of a write depends on scheduling, so it is not asserted
    assert catchups >= CLIENTS and observed > 0

    for reader in readers:  # now read fast: every event arrives, in order, nothing skipped
        reader.slow.clear()
    for reader in readers:
        reader.join(60)
    for reader in readers:
        assert reader.error is None, reader.error
        assert reader.last_event == "done" and reader.seqs == list(range(DELTAS + 2)), reader.seqs[-3:]
    with contextlib.suppress(psutil.Error):
        print(
            f"\nRSS baseline {baseline / 1e6:.1f} MB, peak growth {growth / 1e6:.1f} MB, published {published / 1e6:.0f} MB"
        )
