"""The soak run of ``bench/soak_bench.py`` (30 minutes; the 2-minute CI version: ``tests/integration/test_soak.py``).

Real parts only, as in production: a durable ``redis-server`` (AOF, ``noeviction``, a ``maxmemory``),
``llmq simulate`` with seeded faults (429, 503, cut streams), three ``llmq worker`` processes, an
``llmq gateway`` with SSE clients streaming chat completions through it, and a producer submitting
at a steady rate. While it runs:

* one worker (always the same slot, so the two others and the gateway live the whole run and their
  memory can be watched) is SIGKILLed and a fresh one started in its place every ``kill_every_s``;
* Redis is SIGKILLed and restarted once (``redis_restart_at``);
* Redis sits at its memory limit (``maxmemory`` set just below what it uses: every write that needs
  memory is refused) for ``full_s`` seconds, twice (``full_at``); producers are pushed back
  (``RedisFullError``, the gateway's 503) and try again later with the same ids.

What :func:`check` asserts, per job and for the whole run:

* every job (the producer's and the gateway's) has exactly one terminal event, the last of its
  stream, and its events are numbered without a gap;
* the ledger equals the sum of the results: for every job that ran once, what the ledger charged
  for its calls equals its result's ``cost_usd`` (to the micro-USD each call is rounded to); a job
  that ran more than once (its first run SIGKILLed after a paid call) was charged at least its
  result, the rest being the killed runs' calls, reported apart; the global spend equals the sum of
  every job's charges;
* the spend is within the budget;
* the resident memory of each worker and of the gateway that lived the whole run is flat after the
  warm-up: the median of the last tenth of the samples is at most ``rss_growth_max`` above the
  median of the tenth that follows the warm-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import redis

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis
from producers import Client, RedisFullError, SubmitRefusedError
from producers.settings import ProducerSettings
from tests.support.spend import global_spent_usd
from workers.accounting.money import to_micros
from workers.contract import TERMINAL_EVENT_TYPES, CompletionResult, JobKeys

__all__ = ["SoakConfig", "SoakReport", "check", "run_soak"]

MODEL = "openai:gpt-4o-mini"
TOKEN = "soak-token-5d1f"
GATEWAY_TENANT = "soakgw"


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 1800.0
    #: Stop submitting after this many jobs even if ``duration_s`` has not passed.
    max_jobs: int = 100_000
    workers: int = 3
    #: Each worker's pool, round robin (w0, the one SIGKILLed and replaced, takes the first): the
    #: default ``gevent`` and ``threads`` both, since each finds a dead worker's jobs its own way.
    pools: tuple[str, ...] = ("gevent", "threads")
    concurrency: int = 8
    #: Producer submits per second (the gateway's SSE clients come on top).
    rate_per_s: float = 10.0
    sse_clients: int = 4
    tokens_per_s: float = 40.0
    completion_tokens: int = 20
    fault_rates: str = "429=0.02,503=0.02,cut=0.02"
    seed: int = 11
    kill_every_s: float = 60.0
    #: Fraction of ``duration_s`` at which Redis is SIGKILLed and restarted.
    redis_restart_at: float = 0.5
    #: Fractions of ``duration_s`` at which Redis sits at its memory limit for ``full_s``.
    full_at: Sequence[float] = (0.3, 0.75)
    full_s: float = 30.0
    maxmemory_mb: int = 4096
    budget_usd: float = 100.0
    #: Results, streams and metadata are kept this long (long enough for the final check).
    result_ttl_s: int = 7200
    #: Fraction of the run before memory is compared; then the tenth after it vs the last tenth.
    warmup: float = 0.2
    rss_every_s: float = 5.0
    rss_growth_max: float = 0.10
    check_rss: bool = True
    #: Hang guards only (seconds without progress once submitting stopped).
    drain_guard_s: float = 600.0


@dataclass
class SoakReport:
    config: SoakConfig
    jobs: int = 0
    producer_jobs: int = 0
    gateway_jobs: int = 0
    kills: int = 0
    redis_restarts: int = 0
    full_episodes: int = 0
    pushed_back: Counter[str] = field(default_factory=Counter)
    submit_errors: Counter[str] = field(default_factory=Counter)
    sse: Counter[str] = field(default_factory=Counter)
    terminal_per_job: Counter[int] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    runs_per_job: Counter[int] = field(default_factory=Counter)
    seq_gaps: list[str] = field(default_factory=list)
    bad_terminal: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: Jobs that ran once whose ledger charge differs from their result's cost.
    ledger_mismatch: list[tuple[str, int, int]] = field(default_factory=list)
    #: Jobs that ran more than once charged less than their result.
    undercharged: list[tuple[str, int, int]] = field(default_factory=list)
    spent_micros: int = 0
    charged_micros: int = 0
    results_micros: int = 0
    killed_runs_micros: int = 0
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    rss_growth: dict[str, float] = field(default_factory=dict)
    redis_peak_mb: float = 0.0
    wall_s: float = 0.0
    submit_wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "producer_jobs": self.producer_jobs,
            "gateway_sse_jobs": self.gateway_jobs,
            "submit_s": round(self.submit_wall_s),
            "wall_s": round(self.wall_s),
            "worker_sigkills": self.kills,
            "redis_restarts": self.redis_restarts,
            "memory_limit_episodes": self.full_episodes,
            "pushed_back": dict(self.pushed_back),
            "submit_errors": dict(self.submit_errors),
            "sse": dict(self.sse),
            "terminal_events_per_job": {str(k): v for k, v in sorted(self.terminal_per_job.items())},
            "statuses": dict(sorted(self.statuses.items())),
            "runs_per_job": {str(k): v for k, v in sorted(self.runs_per_job.items())},
            "seq_gaps": len(self.seq_gaps),
            "bad_terminal": len(self.bad_terminal),
            "missing_results": len(self.missing),
            "ledger_usd": self.spent_micros / 1e6,
            "sum_of_results_usd": self.results_micros / 1e6,
            "killed_runs_usd": self.killed_runs_micros / 1e6,
            "single_run_jobs_ledger_mismatch": len(self.ledger_mismatch),
            "budget_usd": self.config.budget_usd,
            "rss_growth_after_warmup": {k: round(v, 4) for k, v in sorted(self.rss_growth.items())},
            # the bench's ratio against its baseline in the same run: RSS at the end vs after warm-up
            "rss_ratio_end_vs_warm": {k: round(1 + v, 4) for k, v in sorted(self.rss_growth.items())},
            "rss_mb_last": {k: round(v[-1][1] / 1e6, 1) for k, v in sorted(self.rss.items()) if v},
            "redis_peak_mb": round(self.redis_peak_mb, 1),
        }


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _memory(client: redis.Redis) -> tuple[int, int]:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"]), int(info["maxmemory"])


class _Run:
    """The moving parts of one soak run (threads share it)."""

    def __init__(self, config: SoakConfig, report: SoakReport) -> None:
        self.config = config
        self.report = report
        self.stop_submitting = threading.Event()
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def add(self, job_id: str, source: str) -> None:
        with self.lock:
            self.ids.append(job_id)
            if source == "producer":
                self.report.producer_jobs += 1
            else:
                self.report.gateway_jobs += 1

    def count(self, counter: Counter[str], key: str) -> None:
        with self.lock:
            counter[key] += 1

    def enough(self) -> bool:
        return (
            self.stop_submitting.is_set()
            or time.monotonic() - self.started >= self.config.duration_s
            or len(self.ids) >= self.config.max_jobs
        )


def _producer(run: _Run, url: str) -> None:
    config = run.config
    rng = random.Random(config.seed)
    interval = 1.0 / config.rate_per_s
    n = 0
    with Client(settings=ProducerSettings(redis_url=url)) as client:
        next_at = time.monotonic()
        while not run.enough():
            job_id = f"soak-{n}"
            job = {
                "id": job_id,
                "model": MODEL,
                "messages": [{"role": "user", "content": f"soak {n} {rng.random():.6f}"}],
                "max_tokens": config.completion_tokens,
            }
            try:
                client.submit(job)
            except RedisFullError as exc:  # pushed back: the same job again later
                run.count(run.report.pushed_back, "producer_redis_full")
                time.sleep(min(exc.retry_after_s or 1.0, 1.0))
                continue
            except SubmitRefusedError as exc:
                run.count(run.report.pushed_back, f"producer_{type(exc).__name__}")
                time.sleep(1.0)
                continue
            except Exception as exc:  # Redis restarting: the same id again (a repeat is deduplicated)
                run.count(run.report.submit_errors, type(exc).__name__)
                time.sleep(1.0)
                continue
            run.add(job_id, "producer")
            n += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic() - 5:
                next_at = time.monotonic()  # fell behind (a pause): do not burst to catch up


def _sse_client(run: _Run, gateway: str, index: int) -> None:
    config = run.config
    headers = {"authorization": f"Bearer {TOKEN}"}
    n = 0
    with httpx2.Client(base_url=gateway, headers=headers, timeout=httpx2.Timeout(120, connect=10)) as http:
        while not run.enough():
            body = {
                "model": MODEL,
                "stream": True,
                "max_tokens": config.completion_tokens,
                "messages": [{"role": "user", "content": f"sse {index}-{n}"}],
            }
            n += 1
            try:
                with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    job_id = response.headers.get("x-llmq-job-id")
                    if job_id:  # a job exists (a 503 no_worker while Redis is full leaves it queued)
                        run.add(job_id, "gateway")
                    if response.status_code == 503:
                        response.read()
                        try:
                            code = response.json()["error"]["code"]
                        except (ValueError, KeyError, TypeError):
                            code = "unknown"
                        run.count(run.report.pushed_back, f"gateway_503_{code}")
                        time.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    if response.status_code != 200:
                        run.count(run.report.sse, f"http_{response.status_code}")
                        response.read()
                        continue
                    done = False
                    for line in response.iter_lines():
                        if line.strip() == "data: [DONE]":
                            done = True
                    run.count(run.report.sse, "done" if done else "ended_without_done")
            except httpx2.HTTPError as exc:
                run.count(run.report.sse, type(exc).__name__)
                time.sleep(0.5)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_soak(config: SoakConfig, *, log: bool = True, log_dir: str | None = None) -> SoakReport:
    report = SoakReport(config=config)
    server = ManagedRedis(durable=True, extra_args=["--maxmemory", f"{config.maxmemory_mb}mb"])
    server.start()
    url = server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    stack_dir = Path(log_dir) if log_dir else None
    env.update(
        {
            "LLMQ_REDIS_URL": url,
            "LLMQ_MONTHLY_BUDGET_USD": str(config.budget_usd),
            "LLMQ_RESULT_TTL_S": str(config.result_ttl_s),
        }
    )
    began = time.monotonic()

    def say(text: str) -> None:
        if log:
            print(f"[{time.monotonic() - began:6.0f} s] {text}", flush=True)

    try:
        with LocalStack(env=env, log_dir=str(stack_dir) if stack_dir else None) as stack:
            stack.env["LLMQ_SETTLE_JOURNAL"] = str(stack.log_dir / "unsettled.jsonl")
            stack.start_redis()  # adopts ours
            extra = ["--fault-rate", config.fault_rates, "--seed", str(config.seed)]
            extra += ["--completion-tokens", str(config.completion_tokens)]
            stack.start_simulator(tokens_per_s=config.tokens_per_s, extra=extra)
            workers = [
                stack.start_worker(
                    pool=config.pools[i % len(config.pools)], concurrency=config.concurrency, name=f"w{i}"
                )
                for i in range(config.workers)
            ]
            stack.wait_for_workers(config.workers, timeout=180)
            gateway, gateway_url = stack.start_gateway(tokens=f"{TOKEN}:{GATEWAY_TENANT}")
            run = _Run(config, report)
            threads = [threading.Thread(target=_producer, args=(run, url), name="producer", daemon=True)]
            threads += [
                threading.Thread(target=_sse_client, args=(run, gateway_url, i), name=f"sse{i}", daemon=True)
                for i in range(config.sse_clients)
            ]
            for thread in threads:
                thread.start()
            say(f"running: {config.workers} workers, gateway {gateway_url}, {config.sse_clients} SSE clients")

            sampler = redis.Redis.from_url(url, socket_timeout=5)
            next_kill = config.kill_every_s
            next_rss = 0.0
            restart_at = config.redis_restart_at * config.duration_s
            full_at = sorted(f * config.duration_s for f in config.full_at)
            restarted = False
            while not run.enough():
                now = time.monotonic() - run.started
                if now >= next_rss:
                    next_rss = now + config.rss_every_s
                    for i, proc in enumerate(workers):
                        rss = _rss(proc.pid)
                        if rss is not None:
                            report.rss.setdefault(f"w{i}" if i else "w0 (killed each time)", []).append((now, rss))
                    rss = _rss(gateway.pid)
                    if rss is not None:
                        report.rss.setdefault("gateway", []).append((now, rss))
                    try:
                        used, _ = _memory(sampler)
                        report.redis_peak_mb = max(report.redis_peak_mb, used / 1e6)
                    except redis.RedisError:
                        pass
                if now >= next_kill:
                    next_kill += config.kill_every_s
                    _kill(workers[0])
                    report.kills += 1
                    workers[0] = stack.start_worker(
                        pool=config.pools[0], concurrency=config.concurrency, name=f"w0-r{report.kills}"
                    )
                    say(f"SIGKILLed worker w0, started w0-r{report.kills} ({len(run.ids)} jobs submitted)")
                    continue
                if not restarted and now >= restart_at:
                    restarted = True
                    server.kill()
                    time.sleep(1.0)
                    server.start()
                    report.redis_restarts += 1
                    say("SIGKILLed and restarted Redis")
                    continue
                if full_at and now >= full_at[0]:
                    full_at.pop(0)
                    used, limit = _memory(sampler)
                    sampler.config_set("maxmemory", max(1_048_576, used - 1_048_576))
                    say(f"Redis at its memory limit ({used / 1e6:.1f} MB used) for {config.full_s:.0f} s")
                    episode_end = time.monotonic() + config.full_s
                    while time.monotonic() < episode_end and not run.enough():  # for a set time, not a wait
                        time.sleep(0.5)
                    sampler.config_set("maxmemory", limit)
                    report.full_episodes += 1
                    say("Redis takes writes again")
                    continue
                time.sleep(0.2)
            run.stop_submitting.set()
            report.submit_wall_s = time.monotonic() - run.started
            for thread in threads:
                thread.join(180)
            say(f"submitting stopped: {len(run.ids)} jobs; waiting for every job to end")
            ids = list(dict.fromkeys(run.ids))
            report.jobs = len(ids)
            _drain(sampler, ids, config.drain_guard_s, say)
            time.sleep(3.0)  # settlements kept by a worker are retried every second or so
            _verify(sampler, ids, report)
            report.spent_micros = to_micros(global_spent_usd(url))
            report.rss_growth = _growth(report.rss, config)
            sampler.close()
    finally:
        server.stop()
    report.wall_s = time.monotonic() - began
    return report


def _drain(client: redis.Redis, ids: list[str], guard_s: float, say: Any) -> None:
    left = list(ids)
    last_change = time.monotonic()
    while left:
        still: list[str] = []
        for chunk in _chunks(left, 500):
            try:
                pipe = client.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.exists(JobKeys(job_id).result)
                found = pipe.execute()
            except redis.RedisError:
                still.extend(chunk)
                continue
            still.extend(job_id for job_id, there in zip(chunk, found, strict=True) if not there)
        if len(still) != len(left):
            last_change = time.monotonic()
            say(f"{len(ids) - len(still)}/{len(ids)} ended")
        left = still
        if left and time.monotonic() - last_change > guard_s:
            raise AssertionError(f"{len(left)} jobs never ended, e.g. {left[:5]}")
        if left:
            time.sleep(2.0)


def _verify(client: redis.Redis, ids: list[str], report: SoakReport) -> None:
    for chunk in _chunks(ids, 200):
        pipe = client.pipeline(transaction=False)
        for job_id in chunk:
            keys = JobKeys(job_id)
            pipe.get(keys.result)
            pipe.xrange(keys.events)
            pipe.mget([f"llmq:{{budget}}:settled:{job_id}#{n}" for n in range(1, 33)])
        replies = pipe.execute()
        for i, job_id in enumerate(chunk):
            raw, entries, settled = replies[3 * i : 3 * i + 3]
            if raw is None:
                report.missing.append(job_id)
                continue
            result = CompletionResult.model_validate_json(raw)
            report.statuses[result.status] += 1
            events = [json.loads(fields[b"e"]) for _, fields in entries]
            seqs = [e["seq"] for e in events]
            if not seqs or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                report.seq_gaps.append(job_id)
            terminal = [e for e in events if e["type"] in TERMINAL_EVENT_TYPES]
            report.terminal_per_job[len(terminal)] += 1
            runs = [e.get("run", 1) for e in events]
            report.runs_per_job[len(set(runs))] += 1
            if not terminal or events[-1] is not terminal[-1] or terminal[-1].get("run", 1) != max(runs):
                report.bad_terminal.append(job_id)
            calls = [int(v) for v in settled if v is not None]
            charged = sum(calls)
            cost = to_micros(result.cost_usd or 0.0)
            report.charged_micros += charged
            report.results_micros += cost
            slack = max(1, len(calls))  # each call is rounded up to a micro-USD on its own
            if len(set(runs)) == 1:
                if abs(charged - cost) > slack:
                    report.ledger_mismatch.append((job_id, charged, cost))
            else:
                if charged + slack < cost:
                    report.undercharged.append((job_id, charged, cost))
                report.killed_runs_micros += max(0, charged - cost)


def _growth(samples: dict[str, list[tuple[float, int]]], config: SoakConfig) -> dict[str, float]:
    """Per process that lived the whole run: median RSS of the last tenth vs the tenth after warm-up."""
    out: dict[str, float] = {}
    start = config.warmup * config.duration_s
    for name, series in samples.items():
        if name.startswith("w0"):
            continue  # replaced every kill_every_s
        after = [rss for t, rss in series if t >= start]
        if len(after) < 10:
            continue
        tenth = max(1, len(after) // 10)
        base = statistics.median(after[:tenth])
        last = statistics.median(after[-tenth:])
        out[name] = last / base - 1.0
    return out


def check(report: SoakReport) -> None:
    """The run's promises, as assertions (see the module docstring)."""
    config = report.config
    assert report.missing == [], report.missing[:10]
    assert dict(report.terminal_per_job) == {1: report.jobs}, report.terminal_per_job
    assert report.bad_terminal == [], report.bad_terminal[:10]
    assert report.seq_gaps == [], report.seq_gaps[:10]
    assert report.ledger_mismatch == [], report.ledger_mismatch[:10]
    assert report.undercharged == [], report.undercharged[:10]
    assert report.spent_micros == report.charged_micros, (report.spent_micros, report.charged_micros)
    assert report.spent_micros <= to_micros(config.budget_usd)
    assert report.kills >= 1 and report.redis_restarts == 1 and report.full_episodes == len(config.full_at)
    if config.check_rss:
        assert report.rss_growth, "no process lived long enough to compare its memory"
        grown = {k: v for k, v in report.rss_growth.items() if v > config.rss_growth_max}
        assert not grown, grown
