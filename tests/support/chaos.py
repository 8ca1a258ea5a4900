"""The chaos run of ``bench/chaos_bench.py`` (2,000 jobs; smaller runs via ``ChaosConfig(jobs=...)``).

Real parts only: a durable ``redis-server`` (AOF, as shipped), ``llmq simulate`` with seeded fault
rates (429, 503, cut streams), three ``llmq worker`` processes and a producer. While the jobs run,
a worker is SIGKILLed (and a fresh one started in its place) each time the number of finished jobs
crosses one of ``kill_at``; Redis is SIGKILLed and restarted once, at ``redis_restart_at``.

What :func:`check` asserts, per job and for the whole run:

* every job has exactly one terminal event, and it is the last one;
* no job ran on two workers at once: every event carries its run number, and a run that was
  superseded never writes again (the runs appear as contiguous blocks in increasing order, the
  terminal event belongs to the highest run), so two live runs interleaving would fail it;
* each served call is charged once: the ledger's spend covers the sum of the results'
  ``cost_usd``, is at least one call per succeeded job and at most one call per request the
  simulator served (a 200 answer: complete, cut, or closed early by a killed worker), with the
  simulator's deterministic pricing (same prompt, same answer length for every job);
* the spend is within the budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis
from producers import Client
from tests.support.spend import global_spent_usd, one_call_usd, results_stored
from workers.contract import TERMINAL_EVENT_TYPES

__all__ = ["ChaosConfig", "ChaosReport", "check", "run_chaos"]

MODEL = "openai:gpt-4o-mini"
PROMPT = [{"role": "user", "content": "survive the chaos"}]
TOKENS = 20


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 2000
    workers: int = 3
    concurrency: int = 4
    #: Fractions of finished jobs at which one worker is SIGKILLed and replaced.
    kill_at: Sequence[float] = tuple(i / 20 for i in range(1, 19))
    #: Fraction of finished jobs at which Redis is SIGKILLed and restarted.
    redis_restart_at: float = 0.5
    tokens_per_s: float = 40.0
    fault_rates: str = "429=0.03,503=0.03,cut=0.03"
    seed: int = 7
    budget_usd: float = 100.0
    #: The models jobs go to, in turn: any provider the simulator serves (named ones through
    #: ``simulator.env.provider_config``, which the stack writes for the workers).
    models: Sequence[str] = (MODEL,)
    #: Hang guard only (seconds without a finished job before the run is declared stuck).
    stall_guard_s: float = 240.0


@dataclass
class ChaosReport:
    jobs: int
    kills: int = 0
    redis_restarts: int = 0
    finished_at_redis_restart: int = 0
    terminal_per_job: Counter[int] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    runs_per_job: Counter[int] = field(default_factory=Counter)
    interleaved: list[str] = field(default_factory=list)
    bad_terminal: list[str] = field(default_factory=list)
    spent_usd: float = 0.0
    results_cost_usd: float = 0.0
    budget_usd: float = 0.0
    #: What one served call costs, per model (the simulator's answers are deterministic).
    one_call_usd: dict[str, float] = field(default_factory=dict)
    succeeded_by_model: Counter[str] = field(default_factory=Counter)
    served_calls: int = 0
    sim_outcomes: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def max_call_usd(self) -> float:
        return max(self.one_call_usd.values(), default=0.0)

    def summary(self) -> str:
        hist = ", ".join(f"{n} terminal: {c} jobs" for n, c in sorted(self.terminal_per_job.items()))
        runs = ", ".join(f"{n} run(s): {c}" for n, c in sorted(self.runs_per_job.items()))
        return "\n".join(
            [
                f"jobs {self.jobs}; worker SIGKILLs {self.kills}; Redis restarts {self.redis_restarts} "
                f"(at {self.finished_at_redis_restart} finished); wall {self.wall_s:.0f} s",
                f"terminal events per job: {hist}",
                f"statuses: {dict(sorted(self.statuses.items()))}; runs per job: {runs}",
                f"jobs whose runs interleaved: {len(self.interleaved)}; terminal not last/not of the last run: "
                f"{len(self.bad_terminal)}",
                f"spend ${self.spent_usd:.6f} (ledger) vs ${self.results_cost_usd:.6f} (sum of results' cost_usd) "
                f"vs budget ${self.budget_usd:.2f}",
                f"simulator: {self.served_calls} served calls (x ${self.max_call_usd:.6f} = "
                f"${self.served_calls * self.max_call_usd:.6f} upper bound); outcomes {self.sim_outcomes}",
            ]
        )


def _sim_stats(simulator_url: str) -> dict[str, object]:
    with urllib.request.urlopen(simulator_url + "/_sim/stats", timeout=30) as reply:
        stats: dict[str, object] = json.load(reply)
    return stats


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _stuck(client: Client, ids: list[str]) -> dict[str, list[tuple[str, int]]]:
    """The unfinished jobs and their events (type, run): what a hang report needs."""
    out: dict[str, list[tuple[str, int]]] = {}
    for job_id in [job_id for job_id in ids if client.get_result(job_id) is None][:5]:
        seen = out.setdefault(job_id, [])
        try:
            seen.extend((e.type, e.run) for e in client.stream(job_id, timeout=2))
        except Exception as exc:  # the report is for a human: keep what was read
            seen.append((type(exc).__name__, -1))
    return out


def run_chaos(config: ChaosConfig, *, log: bool = True) -> ChaosReport:
    report = ChaosReport(
        jobs=config.jobs,
        budget_usd=config.budget_usd,
        one_call_usd={m: one_call_usd(m, PROMPT, TOKENS) for m in config.models},
    )
    server = ManagedRedis(durable=True)
    server.start()
    url = server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env.update({"LLMQ_REDIS_URL": url, "LLMQ_MONTHLY_BUDGET_USD": str(config.budget_usd)})
    started = time.monotonic()
    try:
        with LocalStack(env=env) as stack, Client(url) as client:
            stack.start_redis()  # adopts ours
            extra = ["--fault-rate", config.fault_rates, "--seed", str(config.seed)]
            sim = stack.start_simulator(tokens_per_s=config.tokens_per_s, extra=extra)
            workers: list[subprocess.Popen[bytes]] = [
                stack.start_worker(pool="threads", concurrency=config.concurrency, name=f"w{i}")
                for i in range(config.workers)
            ]
            stack.wait_for_workers(config.workers, timeout=120)
            ids = [f"chaos-{i}" for i in range(config.jobs)]
            models = {job_id: config.models[i % len(config.models)] for i, job_id in enumerate(ids)}
            for job_id in ids:
                client.submit({"model": models[job_id], "messages": PROMPT, "max_tokens": TOKENS, "id": job_id})

            kills = sorted(int(f * config.jobs) for f in config.kill_at)
            restart_at = int(config.redis_restart_at * config.jobs)
            restarted = False
            last, last_change = -1, time.monotonic()
            while True:
                done = results_stored(url, ids)
                if done is None:
                    time.sleep(0.5)
                    continue
                if done != last:
                    last, last_change = done, time.monotonic()
                if time.monotonic() - last_change >= config.stall_guard_s:
                    raise AssertionError(f"stuck at {done} finished: {_stuck(client, ids)} (logs in {stack.log_dir})")
                if done >= config.jobs:
                    break
                if kills and done >= kills[0]:
                    kills.pop(0)
                    victim = report.kills % len(workers)
                    _kill(workers[victim])
                    report.kills += 1
                    name = f"w{victim}-r{report.kills}"
                    workers[victim] = stack.start_worker(pool="threads", concurrency=config.concurrency, name=name)
                    if log:
                        print(f"[{done}/{config.jobs}] SIGKILLed a worker, started {name}", flush=True)
                    continue
                if not restarted and done >= restart_at:
                    restarted = True
                    report.finished_at_redis_restart = done
                    server.kill()
                    time.sleep(1.0)  # down for a moment (any length would do)
                    server.start()
                    report.redis_restarts += 1
                    if log:
                        print(f"[{done}/{config.jobs}] SIGKILLed and restarted Redis", flush=True)
                    continue
                time.sleep(0.2)

            results_cost = 0.0
            for job_id in ids:
                result = client.result(job_id, timeout=60)
                report.statuses[result.status] += 1
                if result.status == "succeeded":
                    report.succeeded_by_model[models[job_id]] += 1
                results_cost += result.cost_usd or 0.0
                events = list(client.stream(job_id, timeout=30))
                terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
                report.terminal_per_job[len(terminal)] += 1
                runs = [e.run for e in events]
                report.runs_per_job[len(set(runs))] += 1
                if runs != sorted(runs):  # a superseded run wrote after its successor started
                    report.interleaved.append(job_id)
                if not terminal or events[-1] is not terminal[-1] or terminal[-1].run != max(runs):
                    report.bad_terminal.append(job_id)
            report.results_cost_usd = results_cost
            report.spent_usd = global_spent_usd(url)
            stats = _sim_stats(sim)
            outcomes = stats.get("by_outcome", {})
            assert isinstance(outcomes, dict)
            report.sim_outcomes = {str(k): int(v) for k, v in sorted(outcomes.items())}
            report.served_calls = sum(v for k, v in report.sim_outcomes.items() if not k.startswith("error_"))
    finally:
        server.stop()
    report.wall_s = time.monotonic() - started
    return report


def check(report: ChaosReport) -> None:
    """The run's promises, as assertions (see the module docstring)."""
    assert dict(report.terminal_per_job) == {1: report.jobs}, report.terminal_per_job
    assert report.interleaved == [], report.interleaved[:10]
    assert report.bad_terminal == [], report.bad_terminal[:10]
    assert sum(report.statuses.values()) == report.jobs
    eps = 1e-9 * max(1, report.jobs)
    # every result's own charge is in the ledger (the ledger also holds what runs cut short spent)
    assert report.results_cost_usd <= report.spent_usd + eps, (report.spent_usd, report.results_cost_usd)
    least = sum(n * report.one_call_usd[model] for model, n in report.succeeded_by_model.items())
    assert report.spent_usd >= least - eps, (report.spent_usd, least)
    assert report.spent_usd <= report.served_calls * report.max_call_usd + eps
    assert report.spent_usd <= report.budget_usd
