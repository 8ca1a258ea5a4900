"""What a webhook costs when a job uses one: the worker's delivery, against a plain job, in one run.

A job with a ``webhook`` pays twice: its terminal write queues the delivery (measured by
``hotpath_bench.py --variant 'webhook:{"webhook": URL}'``), and later a worker's deliverer makes the
attempt: takes it from the due set (a script), reads the record, signs the body (Standard Webhooks
HMAC), checks the address, POSTs it to the receiver and records the outcome (a script). This bench
measures that second part against a real local HTTP receiver (a subprocess answering 204), with
``LLMQ_WEBHOOK_ALLOW_NETWORKS=127.0.0.0/8`` as on a dev box, in two ways:

* ``--measure instructions`` (default, load-proof): two processes under callgrind, each counting
  only the thread that does the measured work (``hotpath_bench.py``'s method): ``plain`` runs
  ``--jobs`` plain jobs through ``JobRunner.run``; ``deliver`` runs as many webhook jobs unmeasured
  (the deliverer thread stopped, so their deliveries wait in the due set), then makes their
  attempts in the measured thread (the deliverer's own take script and ``attempt``, without its
  thread pool's hand-off). The ratio is instructions per delivery over instructions per plain job;
* ``--measure cpu``: one process, blocks of ``--jobs`` interleaved for ``--rounds`` rounds: process
  CPU per plain job, and per delivery (every thread: the deadline timer's thread is counted too);
  the load average is printed with it.

Prints one JSON line.

    .venv/bin/python bench/webhook_cost_bench.py [--measure instructions|cpu] [--jobs 100]
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _measure import load_average  # noqa: E402

from llmq.localredis import free_port  # noqa: E402

RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
"""
ALLOW = "webhook_allow_networks=127.0.0.0/8"


class Receiver:
    """A real HTTP receiver on 127.0.0.1 in a subprocess: answers every POST with 204."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(self.port)])
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Deliveries:
    """A worker's resources for webhook jobs, its deliverer thread stopped: deliveries are made here."""

    def __init__(self, stack: Any, url: str, receiver_url: str) -> None:
        from hotpath_bench import Variant

        self.variant = Variant(f"webhook:{json.dumps({'webhook': receiver_url})}:{ALLOW}", stack, url)
        deliverer = self.variant.resources.deliverer
        assert deliverer is not None
        deliverer.stop()  # its thread would take them first; the attempts are made in this thread
        self.deliverer = deliverer

    def queue(self, jobs: int) -> None:
        self.variant.run(jobs)

    def deliver_all(self, expected: int) -> None:
        from workers.contract.webhooks import DUE_KEY

        d = self.deliverer
        done = 0
        while done < expected:
            now = time.time()
            ids = d._take(keys=[DUE_KEY], args=[now, now + d._lease_s, 8])
            assert ids, f"{expected - done} deliveries not due"
            for raw in ids:
                outcome = d.attempt(raw.decode() if isinstance(raw, bytes) else str(raw))
                assert outcome == "delivered", outcome
                done += 1

    def close(self) -> None:
        self.variant.close()


def _secret() -> None:
    os.environ.setdefault("LLMQ_WEBHOOK_SECRET", "whsec_" + base64.b64encode(b"llmq-bench-webhook-secret").decode())


# --- under callgrind ------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    from hotpath_bench import PLAIN, Variant

    from llmq.devstack import LocalStack

    _secret()
    receiver = Receiver()
    try:
        with LocalStack() as stack:
            url = stack.start_redis()
            stack.start_simulator()
            if args.child == "plain":
                v = Variant(PLAIN, stack, url)
                v.run(args.warmup)
                ctypes.CFUNCTYPE(None)(lambda: v.run(args.jobs))()
                v.close()
            else:
                d = Deliveries(stack, url, receiver.url)
                d.queue(args.warmup)
                d.deliver_all(args.warmup)
                d.queue(args.jobs)
                ctypes.CFUNCTYPE(None)(lambda: d.deliver_all(args.jobs))()
                d.close()
    finally:
        receiver.stop()


def measure_instructions(args: argparse.Namespace) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for role in ("plain", "deliver"):
        out = Path(tempfile.mkdtemp(prefix="webhook-cg-")) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=no"]
        argv += ["--toggle-collect=_CallPythonObject", sys.executable, str(Path(__file__).resolve())]
        argv += ["--child", role, "--jobs", str(args.jobs), "--warmup", str(args.warmup)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=os.environ.copy())
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"{role} under callgrind failed:\n{proc.stderr[-3000:]}")
        counts[role] = int(found.group(1))
        shutil.rmtree(out.parent, ignore_errors=True)
        print(
            f"{role}: {counts[role] / args.jobs / 1e6:.3f} M instructions per {'job' if role == 'plain' else 'delivery'}",
            flush=True,
        )
    return {
        "plain_instructions_per_job": round(counts["plain"] / args.jobs),
        "instructions_per_delivery": round(counts["deliver"] / args.jobs),
        "delivery_over_plain_job": round(counts["deliver"] / counts["plain"], 4),
    }


def measure_cpu(args: argparse.Namespace) -> dict[str, Any]:
    from hotpath_bench import PLAIN, Variant

    from llmq.devstack import LocalStack

    _secret()
    receiver = Receiver()
    plain_blocks: list[float] = []
    deliver_blocks: list[float] = []
    try:
        with LocalStack() as stack:
            url = stack.start_redis()
            stack.start_simulator()
            plain, d = Variant(PLAIN, stack, url), Deliveries(stack, url, receiver.url)
            if plain.resources.deliverer is not None:  # it would take the deliveries made here
                plain.resources.deliverer.stop()
            plain.run(args.warmup)
            d.queue(args.warmup)
            d.deliver_all(args.warmup)
            for k in range(args.rounds):
                d.queue(args.jobs)  # not measured: the webhook jobs themselves
                for step in ("plain", "deliver") if k % 2 == 0 else ("deliver", "plain"):
                    t0 = time.process_time()
                    if step == "plain":
                        plain.run(args.jobs)
                    else:
                        d.deliver_all(args.jobs)
                    ms = (time.process_time() - t0) / args.jobs * 1000
                    (plain_blocks if step == "plain" else deliver_blocks).append(ms)
            plain.close()
            d.close()
    finally:
        receiver.stop()
    p, dl = statistics.median(plain_blocks), statistics.median(deliver_blocks)
    return {
        "plain_cpu_ms_per_job": round(p, 4),
        "cpu_ms_per_delivery": round(dl, 4),
        "delivery_over_plain_job": round(dl / p, 4),
        "plain_blocks": [round(x, 4) for x in plain_blocks],
        "deliver_blocks": [round(x, 4) for x in deliver_blocks],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--measure", choices=("instructions", "cpu"), default="instructions")
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5, help="cpu: interleaved rounds")
    p.add_argument("--child", choices=("plain", "deliver"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    load = [load_average()]
    result = measure_instructions(args) if args.measure == "instructions" else measure_cpu(args)
    load.append(load_average())
    summary = {"bench": "webhook_cost_bench", "measure": args.measure, "jobs": args.jobs, "load": load, **result}
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
