"""How much Redis memory llmqueue holds per queued job, per running job, per stored result and per
idle tenant: the figures to choose ``maxmemory`` from (README, "Sizing Redis").

One private ``redis-server`` (no ``maxmemory``, nothing else on it), the simulator and an in-process
worker (threads). Each figure is the growth of Redis's ``used_memory`` (what ``maxmemory`` is
compared with) over many jobs, divided by their number, and split by key kind with ``MEMORY USAGE``
(the split does not add up to the total: Redis's own per-key overhead, the dictionaries and
jemalloc's size classes are in the total only):

* **queued**: jobs submitted while no worker runs (the broker message and the job's meta hash),
  for prompts of three sizes, giving a fixed part and a part per prompt byte;
* **running**: jobs streaming slowly (one worker, one slot per job), measured at two points of
  their streams: the held message, claim, meta and the events Stream so far, and its growth per
  event (a delta event carries ~``--coalesce-ms`` of text);
* **stored result**: finished jobs (``--tokens`` tokens each): result, events Stream and meta, kept
  ``LLMQ_RESULT_TTL_S`` (1 day), and the ledger's settled marker per call, kept 62 days;
* **idle tenant**: a tenant that ran one job, after its job keys expired: what stays per tenant.

Client buffers are left out of every figure (``mem_clients_normal``: they follow what each connection
does at that instant); count about 20-50 kB per connection on top (workers hold ~2 per slot).

    .venv/bin/python bench/redis_sizing_bench.py [--jobs 1000] [--running 100] [--tenants 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from celery.contrib.testing.worker import start_worker

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llmq.localredis import ManagedRedis  # noqa: E402
from producers import Client  # noqa: E402
from simulator.app import SimConfig, SimulatorThread  # noqa: E402
from simulator.env import provider_env  # noqa: E402
from workers.contract import DEFAULT_QUEUE, JobKeys  # noqa: E402
from workers.runtime.app import close_runner, create_app  # noqa: E402
from workers.settings import Settings  # noqa: E402

MODEL = "openai:gpt-4o-mini"
GUARD_S = 600


def used(r: redis.Redis) -> int:
    """``used_memory`` without the clients' buffers (they move with what connections do at that
    instant, not with what is stored) and what ``maxmemory`` does not count (AOF, replication)."""
    info: dict[str, Any] = r.info("memory")
    noise = ("mem_clients_normal", "mem_clients_slaves", "mem_not_counted_for_evict")
    return int(info["used_memory"]) - sum(int(info.get(name, 0)) for name in noise)


def kind(key: bytes) -> str:
    """A key's kind, by what keeps it and for how long: ``job:events`` (a job's keys, the result TTL),
    ``history:jobs`` (the history index, ``LLMQ_HISTORY_DAYS``), ``budget:settled`` (62 days),
    ``budget:tenant``, ``broker:unacked`` ..."""
    text = key.decode()
    if text.startswith("llmq:job:{"):
        return "job:" + text.rsplit(":", 1)[1]
    if text.startswith("llmq:history:{"):
        return "history:" + text.split("}:", 1)[1].split(":", 1)[0]
    if text.startswith("llmq:{budget}:"):
        if ":settled:" in text:
            return "budget:settled"
        return "budget:tenant" if ":tenant:" in text else "budget:" + text.rsplit(":", 1)[1]
    if text in (DEFAULT_QUEUE, "unacked", "unacked_index") or text.startswith("_kombu"):
        return "broker:" + ("bindings" if text.startswith("_kombu") else text)
    return text.split(":", 2)[0] + ":" + text.split(":", 2)[1] if text.count(":") >= 1 else text


def by_kind(r: redis.Redis) -> Counter[str]:
    sizes: Counter[str] = Counter()
    for key in r.scan_iter(count=1000):
        sizes[kind(key)] += int(r.memory_usage(key, samples=0) or 0)
    return sizes


def delete(r: redis.Redis, pattern: str) -> None:
    keys = list(r.scan_iter(pattern, count=1000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i : i + 1000])


def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def job(job_id: str, content: str, tokens: int, tenant: str = "default") -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "id": job_id,
        "tenant": tenant,
    }


def per(total: float, n: int) -> int:
    return round(total / n)


def split(before: Counter[str], after: Counter[str], n: int, kinds: Iterable[str] | None = None) -> dict[str, int]:
    names = kinds if kinds is not None else sorted(set(after) | set(before))
    return {k: per(after[k] - before[k], n) for k in names if after[k] != before[k]}


def measure_queued(url: str, r: redis.Redis, jobs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Client(url) as client:
        client.submit(job("warm-q", "warm", 20))
        for size in (20, 2_000, 20_000):
            r.delete(DEFAULT_QUEUE)
            base, kinds0 = used(r), by_kind(r)
            for i in range(jobs):
                client.submit(job(f"q{size}-{i}", "x" * size, 20))
            out[f"prompt_{size}"] = {"bytes": per(used(r) - base, jobs), "keys": split(kinds0, by_kind(r), jobs)}
            r.delete(DEFAULT_QUEUE, *(JobKeys(f"q{size}-{i}").meta for i in range(jobs)))
    small, large = out["prompt_20"]["bytes"], out["prompt_20000"]["bytes"]
    out["per_prompt_byte"] = round((large - small) / (20_000 - 20), 3)
    out["fixed"] = round(small - 20 * out["per_prompt_byte"])
    return out


def measure_running(url: str, r: redis.Redis, sim: SimulatorThread, running: int, coalesce_ms: float) -> dict[str, Any]:
    settings = Settings(
        redis_url=url, pool="threads", concurrency=running, coalesce_ms=coalesce_ms, monthly_budget_usd=1000
    )
    sim.simulator.config.tokens_per_s = 20.0  # a delta event per coalescing window, for minutes
    sim.simulator.config.completion_tokens = 100_000
    app = create_app(settings, provider_env=provider_env(sim.url))
    ids = [f"run-{i}" for i in range(running)]
    out: dict[str, Any] = {}
    with (
        start_worker(app, pool="threads", concurrency=running, perform_ping_check=False, without_heartbeat=True),
        Client(url) as client,
    ):
        client.submit(job("warm-r", "warm", 5)).result(timeout=GUARD_S)
        base, kinds0 = used(r), by_kind(r)
        for job_id in ids:
            client.submit(job(job_id, "stream slowly", 100_000))

        def events_at_least(n: int) -> Callable[[], bool]:
            return lambda: all(r.xlen(JobKeys(j).events) >= n for j in ids)

        points = []
        for events in (10, 110):  # a Stream node holds up to 100 entries (stream-node-max-entries)
            until(events_at_least(events), f"{events} events per running job")
            mean_events = sum(r.xlen(JobKeys(j).events) for j in ids) / running
            points.append((mean_events, used(r), by_kind(r)))
        (e1, u1, k1), (e2, u2, k2) = points
        out["at_events"] = round(e1, 1)
        out["bytes"] = per(u1 - base, running)
        out["keys"] = split(kinds0, k1, running)
        out["per_event"] = round((u2 - u1) / running / (e2 - e1))
        out["events_kind_per_event"] = round((k2["job:events"] - k1["job:events"]) / running / (e2 - e1))
        for job_id in ids:
            client.cancel(job_id)
        for job_id in ids:
            client.result(job_id, timeout=GUARD_S)
    close_runner(app)
    return out


def measure_results(url: str, r: redis.Redis, sim: SimulatorThread, jobs: int, tokens: int) -> dict[str, Any]:
    settings = Settings(redis_url=url, pool="threads", concurrency=32, monthly_budget_usd=1000)
    sim.simulator.config.tokens_per_s = 0.0
    sim.simulator.config.completion_tokens = tokens
    app = create_app(settings, provider_env=provider_env(sim.url))
    out: dict[str, Any] = {}
    with (
        start_worker(app, pool="threads", concurrency=32, perform_ping_check=False, without_heartbeat=True),
        Client(url) as client,
    ):
        client.submit(job("warm-s", "warm", tokens)).result(timeout=GUARD_S)
        time.sleep(0.5)  # the warm job's batched ack (a measurement's start, not a condition)
        base, kinds0 = used(r), by_kind(r)
        handles = [client.submit(job(f"res-{i}", "a question of a few words", tokens)) for i in range(jobs)]
        for h in handles:
            h.result(timeout=GUARD_S)
        until(lambda: r.zcard("unacked_index") == 0, "the batched acks")
        kinds1 = by_kind(r)
        out["bytes"] = per(used(r) - base, jobs)
        out["keys"] = split(kinds0, kinds1, jobs)
        out["events_per_job"] = round(sum(r.xlen(JobKeys(h.id).events) for h in handles) / jobs, 1)
        # what each retention keeps, by deleting in turn what expires first (exact, overhead included)
        total = used(r) - base
        delete(r, "llmq:job:{res-*")  # the result TTL (LLMQ_RESULT_TTL_S)
        after_jobs = used(r) - base
        delete(r, "llmq:history:*")  # LLMQ_HISTORY_DAYS
        after_history = used(r) - base
        out["by_retention"] = {
            "job_keys": per(total - after_jobs, jobs),
            "history": per(after_jobs - after_history, jobs),
            "settled_marker": per(after_history, jobs),
        }
    close_runner(app)
    return out


def measure_tenants(url: str, r: redis.Redis, sim: SimulatorThread, tenants: int) -> dict[str, Any]:
    """Tenants that each ran one job, after everything that expires with their jobs is gone (job keys,
    history, settled markers): what a tenant costs while it runs nothing."""
    settings = Settings(redis_url=url, pool="threads", concurrency=32, monthly_budget_usd=1000)
    app = create_app(settings, provider_env=provider_env(sim.url))
    out: dict[str, Any] = {}

    def forget_jobs() -> None:
        for pattern in ("llmq:job:*", "llmq:{budget}:settled:*", "llmq:history:*"):
            delete(r, pattern)

    with (
        start_worker(app, pool="threads", concurrency=32, perform_ping_check=False, without_heartbeat=True),
        Client(url) as client,
    ):
        client.submit(job("warm-t", "warm", 5, tenant="warm-tenant")).result(timeout=GUARD_S)
        forget_jobs()
        base, kinds0 = used(r), by_kind(r)
        handles = [client.submit(job(f"t-{i}", "hello", 5, tenant=f"tenant-{i}")) for i in range(tenants)]
        for h in handles:
            h.result(timeout=GUARD_S)
        until(lambda: r.zcard("unacked_index") == 0, "the batched acks")
        forget_jobs()
        out["bytes"] = per(used(r) - base, tenants)
        out["keys"] = split(kinds0, by_kind(r), tenants)
    close_runner(app)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--running", type=int, default=100)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=200, help="completion tokens of each stored result")
    parser.add_argument("--coalesce-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    with ManagedRedis() as server, SimulatorThread(SimConfig(latency=0.0, tokens_per_s=0.0)) as sim:
        r = redis.Redis.from_url(server.url)
        figures["queued"] = measure_queued(server.url, r, args.jobs)
        r.flushall()
        figures["running"] = measure_running(server.url, r, sim, args.running, args.coalesce_ms)
        r.flushall()
        figures["stored_result"] = measure_results(server.url, r, sim, args.jobs, args.tokens)
        figures["stored_result"]["tokens"] = args.tokens
        r.flushall()
        figures["idle_tenant"] = measure_tenants(server.url, r, sim, args.tenants)
        figures["redis_version"] = r.info("server")["redis_version"]
        r.close()
    q, run, res, ten = figures["queued"], figures["running"], figures["stored_result"], figures["idle_tenant"]
    print(f"queued job:     {q['fixed']} B + {q['per_prompt_byte']} B per prompt byte "
          f"(20 / 2,000 / 20,000-char prompt: {q['prompt_20']['bytes']} / {q['prompt_2000']['bytes']} / "
          f"{q['prompt_20000']['bytes']} B); keys {q['prompt_20']['keys']}")  # fmt: skip
    print(f"running job:    {run['bytes']} B at {run['at_events']} events, +{run['per_event']} B per event; "
          f"keys {run['keys']}")  # fmt: skip
    print(f"stored result:  {res['bytes']} B ({res['tokens']} tokens, {res['events_per_job']} events); by what keeps "
          f"it (job keys: LLMQ_RESULT_TTL_S, history: LLMQ_HISTORY_DAYS, settled marker: 62 days): {res['by_retention']}; "
          f"keys {res['keys']}")  # fmt: skip
    print(f"idle tenant:    {ten['bytes']} B; keys {ten['keys']}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
