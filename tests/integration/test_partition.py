"""A worker cut off from Redis by a network partition mid-job, while a second worker runs outside.

Real parts only: a durable ``redis-server`` on the host, a worker and its own simulator inside a
network namespace (``tests/support/netns.py``) that reaches Redis over a veth pair, and a second
worker and simulator outside. The namespaced worker starts the job; once its first delta is
stored the pair's host end goes down (packets dropped: the worker's connections stall, as in a
real partition, while its own LLM stream carries on). The outside worker takes the job over
once the cut-off one's proof of life lapses, and ends it. Then the link returns: the stalled
writes of the cut-off run arrive, and the claim fences every one of them.

Asserted: the job ends once (one terminal event, from the new run), the cut-off run publishes
nothing after the takeover and stores nothing, the ledger holds exactly the ending run's cost
(the cut-off run's call, served by its own simulator, is never charged), and the cut-off worker
says it was fenced. Waits are bounded conditions; nothing is timed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis, free_port
from producers import Client
from producers.client import make_celery
from simulator.env import provider_env
from tests.support.netns import Partition, need_partition
from tests.support.waits import until
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger, to_micros
from workers.contract import TERMINAL_EVENT_TYPES, JobKeys, StreamEvent

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
HANG_GUARD_S = 240


def _events(client: Client, job_id: str) -> list[StreamEvent]:
    entries = client.redis.xrange(JobKeys(job_id).events)
    return client.parse_page(entries)[0] if entries else []


def _served(url: str) -> int:
    with urllib.request.urlopen(url + "/_sim/stats", timeout=10) as reply:
        return int(json.load(reply)["requests"])


@pytest.fixture
def partition() -> Iterator[Partition]:
    with need_partition() as part:
        yield part


class Inside:
    """Processes started inside the namespace, stopped by process group at the end."""

    def __init__(self, part: Partition, log_dir: Path) -> None:
        self.part, self.log_dir = part, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            self.part.command(argv), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _idle(app: Celery, name: str) -> bool:
    """``name`` answers over the broker and runs no task (its run of the job has ended)."""
    replies = app.control.inspect(destination=[name], timeout=1.0).active() or {}
    return name in replies and not replies[name]


@pytest.mark.parametrize("mode", ["down", "blackhole"])
def test_a_partitioned_worker_is_replaced_and_fenced(partition: Partition, tmp_path: Path, mode: str) -> None:
    server = ManagedRedis(
        durable=True, extra_args=["--bind", "127.0.0.1", partition.host_ip, "--protected-mode", "no"]
    ).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env.update({"LLMQ_REDIS_URL": server.url, "LLMQ_MONTHLY_BUDGET_USD": "100"})
    inside = Inside(partition, tmp_path)
    control = make_celery(server.url)
    try:
        with LocalStack(env=env) as stack, Client(server.url) as client:
            stack.start_redis()  # adopts ours
            outside_sim = stack.start_simulator(tokens_per_s=20)

            # the worker to be cut off, with a simulator of its own inside the namespace (its LLM
            # stream is not what the partition cuts)
            sim_port = free_port()
            inside.spawn(
                "sim-inside",
                [
                    sys.executable,
                    "-m",
                    "llmq.cli",
                    "simulate",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(sim_port),
                    "--tokens-per-s",
                    "4",
                ],
                env,
            )
            inside_sim = f"http://{partition.ns_ip}:{sim_port}"
            until(lambda: _answers(inside_sim + "/health"), "the namespaced simulator", guard_s=30)
            cut_env = {
                **env,
                **provider_env(f"http://127.0.0.1:{sim_port}"),
                "LLMQ_REDIS_URL": f"redis://{partition.host_ip}:{server.port}/0",
            }
            argv = [sys.executable, "-m", "llmq.cli", "worker", "--pool", "threads", "--concurrency", "2"]
            inside.spawn("w-cut", [*argv, "--hostname", "w-cut@%h", "--loglevel", "WARNING"], cut_env)
            cut_name = f"w-cut@{socket.gethostname()}"
            stack.wait_for_workers(1, timeout=60)

            job_id = "partitioned-1"
            prompt = [{"role": "user", "content": "cut me off"}]
            client.submit({"model": MODEL, "messages": prompt, "max_tokens": 40, "id": job_id})
            until(
                lambda: any(e.type == "delta" for e in _events(client, job_id)),
                "the cut-off run's first delta",
                guard_s=HANG_GUARD_S,
            )
            first_run = _events(client, job_id)[0].run

            partition.cut(mode)
            stack.start_worker(pool="threads", concurrency=2, name="w-live")
            result = client.result(job_id, timeout=HANG_GUARD_S)
            assert result.status == "succeeded"
            ended = _events(client, job_id)
            terminal = [e for e in ended if e.type in TERMINAL_EVENT_TYPES]
            assert len(terminal) == 1 and terminal[0].run > first_run, [(e.seq, e.run, e.type) for e in ended]
            assert _served(outside_sim) == 1

            partition.heal()
            # the cut-off run carries on (stalled writes arrive, or it finds Redis again and claims
            # again): whatever it writes is fenced by the claim; wait until its task has ended
            until(lambda: _idle(control, cut_name), "the cut-off worker's run to end", guard_s=HANG_GUARD_S)
            assert _served(inside_sim) == 1  # its call was served (and must not be charged)

            after = _events(client, job_id)
            takeover = next(e.seq for e in after if e.run > first_run)
            assert all(e.run > first_run for e in after if e.seq >= takeover), [(e.seq, e.run, e.type) for e in after]
            assert [e.type for e in after if e.type in TERMINAL_EVENT_TYPES] == [terminal[0].type]
            assert client.get_result(job_id) == result  # nothing stored over the ending
            status = next(s for s in Ledger(client.redis).show().scopes if s.scope == GLOBAL_SCOPE)
            assert result.cost_usd is not None
            assert to_micros(status.spent_usd) == to_micros(result.cost_usd)  # charged once: the ending run
            print(f"{mode}: {len(after)} events, the takeover at seq {takeover}")
    finally:
        control.close()
        inside.stop()
        server.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False
