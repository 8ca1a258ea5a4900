"""Happy-path cost of the resilience layers: the bare provider call vs the full guarded chain.

Same process, same in-process simulator, same local Redis, same run; the variants are
interleaved round by round so load from other processes falls on every side of a ratio:

* ``bare``     — ``ProviderModel.stream(request)``, consumed;
* ``wrappers`` — ``build_chain`` per job without shared state: Fallback( Retry( Guarded )) with
  the TTFT limit armed on the watchdog (the pure-Python cost of the layers);
* ``full``     — ``build_chain`` per job with the process's ``SharedGuards``, as the pipeline does:
  breaker and not-before time from the pub/sub mirror, RPM/TPM buckets (a Lua script per call,
  or none while the process's lease lasts: ``workers/guards/leases.py``),
  TTFT watchdog, retry and a two-model fallback chain;
* ``wrap+get`` — ``wrappers`` plus one plain Redis ``GET`` per job: a control showing what any
  single Redis round trip costs inside a job, next to the limiter's one.

Every job streams 20 tokens from the primary model. Limits are set far above the bench's rate
(a binding limit is, by design, not the happy path); the number of guard waits is printed to show
none happened. CPU is this process's CPU minus the simulator thread's, both read from nanosecond
clocks (``time.process_time`` and the thread's ``pthread_getcpuclockid``; the guards' listener and
watchdog threads are counted); redis-server CPU and Redis calls per job are printed beside it.

Before anything else it prints the layers' pure-Python cost: the same chains around an in-memory
provider (no I/O, no Redis), in µs per call.

Then the same comparison for whole jobs (``--pipeline-jobs``, 0 to skip): ``JobRunner.run`` with
real worker resources (claim, pre-count, events, result store), the shared guards off (``guards``
None, a supported configuration) and on, interleaved.

    .venv/bin/python bench/resilience_bench.py [--jobs 800] [--rounds 7] [--threads 8] [--pipeline-jobs 400]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmq.localredis import ManagedRedis
from simulator.app import SimConfig, SimulatorThread
from workers.contract import Message, RequestParams
from workers.guards.shared import SharedGuards
from workers.jobs.chain import build_chain
from workers.llm.base import ChatRequest
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.model import ChainHooks, ProviderModel, RunContext
from workers.llm.registry import build_registry
from workers.routes import LLMQConfig, ModelConfig

PRIMARY, FALLBACK = "openai:gpt-4o-mini", "openai:gpt-4o"
VARIANTS = ("bare", "wrappers", "full", "wrap+get")


class _Waits(ChainHooks):
    def __init__(self) -> None:
        self.waits = 0
        self.longest = 0.0
        self.skips = 0

    def on_wait(self, model: str, reason: str, seconds: float) -> None:
        self.waits += 1
        self.longest = max(self.longest, seconds)

    def on_skip(self, model: str, reason: str) -> None:
        self.skips += 1


def _config(ttft: bool = True) -> LLMQConfig:
    limits = ModelConfig(rpm=1_000_000, tpm=1_000_000_000, ttft_limit_s=30.0 if ttft else None)
    return LLMQConfig(models={PRIMARY: limits, FALLBACK: limits})


def _redis_calls(client: redis.Redis) -> tuple[int, int]:
    """(EVALSHA calls, all commands including those run inside scripts) so far."""
    stats = client.info("commandstats")
    scripts = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return scripts, sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def _run_threads(job: Callable[[], None], jobs: int, threads: int) -> None:
    counter = itertools.count()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while next(counter) < jobs:
                job()
        except BaseException as exc:  # surface failures instead of timing a broken run
            errors.append(exc)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=400, help="jobs per variant per round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=8, help="concurrent jobs (worker concurrency)")
    ap.add_argument("--pipeline-jobs", type=int, default=400, help="jobs per variant per round through JobRunner")
    ap.add_argument("--external-sim", action="store_true", help="run the simulator as its own process")
    ap.add_argument("--mode", choices=("stream", "complete"), default="stream", help="streamed or whole answers")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    floor = _python_floor(_config())
    print("pure-Python cost, in-memory provider (µs/call): " + ", ".join(f"{k} {v:.1f}" for k, v in floor.items()))
    external = os.environ.get("LLMQ_REDIS_URL")
    managed = None if external else ManagedRedis().start()
    url = external or managed.url  # type: ignore[union-attr]
    redis_proc = psutil.Process(managed.process.pid) if managed and managed.process else None
    client = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, max_connections=args.threads + 10))
    client.flushdb()
    stack = None
    if args.external_sim:  # the simulator in its own process: no GIL shared with the jobs
        from llmq.devstack import LocalStack

        stack = LocalStack()
        sim_url = stack.start_simulator()
        sim = None
    else:
        sim = SimulatorThread(SimConfig(latency=0.0, tokens_per_s=0.0, completion_tokens=20)).__enter__()
        sim_url = sim.url
    http = HTTPClient(HTTPSettings(max_connections=args.threads * 2, http2=False))
    registry = build_registry(http, {"OPENAI_BASE_URL": f"{sim_url}/v1"})
    # --mode complete: non-streamed calls, whose connections are kept alive (see RESULTS); no TTFT
    # limit there, since a TTFT limit makes GuardedModel.complete read a stream
    streaming = args.mode == "stream"
    config = _config(ttft=streaming)
    guards = SharedGuards(client, config)
    guards.start()
    assert guards.wait_live(), "the guard mirror did not subscribe"
    hooks = _Waits()
    bare_model = ProviderModel(registry.get("openai"), PRIMARY, PRIMARY.split(":", 1)[1])
    messages = [Message(role="user", content="How does the queue keep every worker under the limit?")]
    request = ChatRequest(messages=messages, params=RequestParams(max_tokens=64), prompt_tokens=18)

    def consume(stream) -> None:
        n = sum(1 for _ in stream)
        if n == 0:
            raise RuntimeError("empty answer")

    def bare() -> None:
        if streaming:
            consume(bare_model.stream(request))
        elif not bare_model.complete(request).text:
            raise RuntimeError("empty answer")

    def chained(shared: SharedGuards | None) -> Callable[[], None]:
        def job() -> None:
            ctx = RunContext(hooks=hooks)
            chain = build_chain([PRIMARY, FALLBACK], registry, config, ctx, guards=shared)
            if not streaming:
                if not chain.complete(request).text or chain.model_id != PRIMARY:
                    raise RuntimeError("empty answer or fell back")
                return
            stream = chain.stream(request)
            consume(stream)
            if stream.model_id != PRIMARY:  # type: ignore[attr-defined]
                raise RuntimeError(f"fell back to {stream.model_id}")  # type: ignore[attr-defined]

        return job

    wrappers = chained(None)

    def wrap_get() -> None:
        client.get("llmq:bench:control")
        wrappers()

    jobs = {"bare": bare, "wrappers": wrappers, "full": chained(guards), "wrap+get": wrap_get}
    sim_thread = next((t for t in threading.enumerate() if t.name == "llmq-simulator"), None)
    # nanosecond clocks (psutil's per-process and per-thread times tick in 10 ms): the whole
    # process's CPU, and the simulator thread's own clock to subtract
    sim_clock = time.pthread_getcpuclockid(sim_thread.ident) if sim_thread and sim_thread.ident else None

    def sim_cpu() -> float:
        return time.clock_gettime(sim_clock) if sim_clock is not None else 0.0

    def process_cpu() -> float:
        return time.process_time() - sim_cpu()

    def measure(name: str, n: int) -> dict[str, float]:
        c0, r0 = process_cpu(), redis_proc.cpu_times() if redis_proc else None
        scripts0, commands0 = _redis_calls(client)
        t0 = time.perf_counter()
        _run_threads(jobs[name], n, args.threads)
        wall = time.perf_counter() - t0
        cpu = process_cpu() - c0
        scripts1, commands1 = _redis_calls(client)
        out = {
            "jobs_s": n / wall,
            "cpu_us": cpu / n * 1e6,
            "scripts": (scripts1 - scripts0) / n,
            "commands": (commands1 - commands0) / n,
        }
        if redis_proc and r0:
            r1 = redis_proc.cpu_times()
            out["redis_cpu_us"] = (r1.user + r1.system - r0.user - r0.system) / n * 1e6
        return out

    for name in VARIANTS:  # warm-up: connections, script cache, imports
        measure(name, max(50, args.jobs // 10))
    hooks.waits = hooks.skips = 0
    rounds: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for name in order:
            rounds[name].append(measure(name, args.jobs))

    def med(name: str, key: str) -> float:
        return statistics.median(x.get(key, 0.0) for x in rounds[name])

    def ratios(name: str, key: str) -> list[float]:
        return sorted(a[key] / b[key] for a, b in zip(rounds[name], rounds["bare"], strict=True))

    print(
        f"{args.rounds} rounds x {args.jobs} {args.mode} jobs per variant, {args.threads} threads, 20 tokens per answer"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    head = ("variant", "jobs/s", "CPU µs/job", "vs bare (min-max)", "redis-server µs", "EVALSHA", "commands")
    print(f"{head[0]:<10}{head[1]:>8}{head[2]:>12}{head[3]:>24}{head[4]:>17}{head[5]:>9}{head[6]:>10}")
    for name in VARIANTS:
        r = ratios(name, "cpu_us")
        spread = f"{statistics.median(r):.3f}x ({r[0]:.2f}-{r[-1]:.2f})"
        print(
            f"{name:<10}{med(name, 'jobs_s'):>8.0f}{med(name, 'cpu_us'):>12.0f}{spread:>24}"
            f"{med(name, 'redis_cpu_us'):>17.1f}{med(name, 'scripts'):>9.2f}{med(name, 'commands'):>10.2f}"
        )
    summary = {
        "python_floor_us": floor,
        "wrappers_cpu_ratio": statistics.median(ratios("wrappers", "cpu_us")),
        "full_cpu_ratio": statistics.median(ratios("full", "cpu_us")),
        "wrap_get_cpu_ratio": statistics.median(ratios("wrap+get", "cpu_us")),
        "full_jobs_s_ratio": statistics.median(ratios("full", "jobs_s")),
        "full_minus_bare_cpu_us": med("full", "cpu_us") - med("bare", "cpu_us"),
        "guard_waits": hooks.waits,
        "longest_guard_wait_s": hooks.longest,
        "guard_skips": hooks.skips,
    }
    print(
        f"CPU per job, full / bare: {summary['full_cpu_ratio']:.3f}x (goal <= 1.10x), "
        f"+{summary['full_minus_bare_cpu_us']:.0f} µs; jobs/s full / bare: {summary['full_jobs_s_ratio']:.3f}x"
    )
    print(
        f"guard waits: {hooks.waits} (longest {hooks.longest * 1e3:.2f} ms), skips: {hooks.skips}; "
        "the limits are far above the bench's rate"
    )
    if args.pipeline_jobs:
        summary["pipeline"] = _pipeline(url, sim_url, args, measure_cpu=process_cpu)
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=2))

    guards.stop()
    http.close()
    if sim is not None:
        sim.__exit__(None, None, None)
    if stack is not None:
        stack.stop()
    client.close()
    if managed:
        managed.stop()


def _python_floor(config: LLMQConfig, calls: int = 5000) -> dict[str, float]:
    """µs per call of the chain around an in-memory provider: the layers' own Python cost."""
    from workers.llm.base import ChatRequest, ChatStream, Completion, Provider
    from workers.llm.registry import ProviderRegistry

    words = [f" w{i}" for i in range(20)]

    class MemoryStream(ChatStream):
        def __iter__(self):
            for w in words:
                self.text_parts.append(w)
                yield w
            self.completed = True

        def close(self) -> None:
            self.closed = True

    class MemoryProvider(Provider):
        name = "openai"

        def complete(self, model: str, request: ChatRequest) -> Completion:  # pragma: no cover - unused
            return Completion(text="".join(words))

        def stream(self, model: str, request: ChatRequest) -> ChatStream:
            return MemoryStream()

    registry = ProviderRegistry({"openai": MemoryProvider()})
    request = ChatRequest(
        messages=[Message(role="user", content="x")], params=RequestParams(max_tokens=64), prompt_tokens=18
    )
    bare = ProviderModel(registry.get("openai"), PRIMARY, PRIMARY.split(":", 1)[1])
    plain = LLMQConfig()
    variants = {
        "bare": lambda: list(bare.stream(request)),
        "fallback+retry": lambda: list(build_chain([PRIMARY, FALLBACK], registry, plain, RunContext()).stream(request)),
        "+guarded/TTFT": lambda: list(build_chain([PRIMARY, FALLBACK], registry, config, RunContext()).stream(request)),
    }
    out: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        for _ in range(calls // 5):
            fn()
    for _ in range(5):
        for name, fn in variants.items():
            t = time.thread_time()
            for _ in range(calls):
                fn()
            out[name].append((time.thread_time() - t) / calls * 1e6)
    return {k: statistics.median(v) for k, v in out.items()}


def _pipeline(url: str, sim_url: str, args: argparse.Namespace, measure_cpu: Callable[[], float]) -> dict:
    """Whole jobs through ``JobRunner``: shared guards off vs on, same resources, interleaved."""
    import tempfile

    from workers.contract import CompletionJob
    from workers.jobs.pipeline import JobRunner
    from workers.runtime.resources import WorkerResources
    from workers.settings import Settings

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        for model in (PRIMARY, FALLBACK):
            f.write(f'[models."{model}"]\nrpm = 1000000\ntpm = 1000000000\nttft_limit_s = 30\n')
    settings = Settings(redis_url=url, pool="threads", concurrency=args.threads, config=f.name, coalesce_ms=20.0)
    res = WorkerResources.build(settings, watch_cancels=False, provider_env={"OPENAI_BASE_URL": f"{sim_url}/v1"})
    guards = res.guards
    runner = JobRunner(res)
    serial = itertools.count()

    def job() -> None:
        j = CompletionJob(
            id=f"bench-{os.getpid()}-{next(serial)}",
            model=PRIMARY,
            fallbacks=[FALLBACK],
            max_tokens=64,
            messages=[Message(role="user", content="How does the queue keep every worker under the limit?")],
        )
        outcome = runner.run(j)
        if outcome.result is None or outcome.result.status != "succeeded":
            raise RuntimeError(f"job failed: {outcome}")

    figures: dict[str, list[float]] = {"guards off": [], "guards on": []}
    for r in range(args.rounds + 1):
        for name in ("guards off", "guards on") if r % 2 == 0 else ("guards on", "guards off"):
            res.guards = guards if name == "guards on" else None
            n = args.pipeline_jobs if r else max(50, args.pipeline_jobs // 10)  # round 0 warms up
            c0 = measure_cpu()
            _run_threads(job, n, args.threads)
            if r:
                figures[name].append((measure_cpu() - c0) / n * 1e6)
    res.guards = guards
    res.close()
    os.unlink(f.name)
    off, on = (statistics.median(figures[k]) for k in ("guards off", "guards on"))
    ratio = statistics.median(b / a for a, b in zip(figures["guards off"], figures["guards on"], strict=True))
    print(f"whole jobs (JobRunner, {args.pipeline_jobs} per round): CPU µs/job guards off {off:.0f}, on {on:.0f}")
    print(f"  shared guards on / off: {ratio:.3f}x (+{on - off:.0f} µs per job)")
    return {"cpu_us_off": off, "cpu_us_on": on, "ratio": ratio}


if __name__ == "__main__":
    main()
