"""The tool loop's own cost: a two-turn tool job vs the same two model calls as plain jobs.

One run, same machine, same simulator (a subprocess, so its CPU is not counted), same Redis:

* **tool job**: ``tools: ["calculate"]`` on ``openai:gpt-4o-mini~tools``: turn 1 answers with a
  tool call, the worker validates and runs it, turn 2 answers with text quoting the result;
* **baseline**: two plain jobs with exactly those two requests (the first with ``calculate`` as a
  client tool and the same fault, the second with the first turn's messages and the tool result),
  run back to back.

Both run through the real pipeline (``JobRunner.run``: claim, chain, metering, ledger, events,
result store), in this process, one job at a time. Reported per job: CPU seconds of this process
(``time.process_time``), and the gap the simulator saw between the end of the first request and
the start of the second (the tool job: the loop's wait between turn 1's last byte and turn 2's
request, including the tool run; the baseline: finishing one job and starting the next).

    .venv/bin/python bench/tools_bench.py [--jobs 200] [--stream | --no-stream]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llmq.devstack import LocalStack  # noqa: E402
from workers.contract import CompletionJob  # noqa: E402
from workers.jobs.pipeline import JobRunner  # noqa: E402
from workers.runtime.resources import WorkerResources  # noqa: E402
from workers.settings import Settings  # noqa: E402

MODEL = "openai:gpt-4o-mini~tools"
PROMPT = [{"role": "user", "content": "What is 2 * (3 + 4)?"}]
CALCULATE = {
    "type": "function",
    "function": {
        "name": "calculate",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "examples": ["2 * (3 + 4)"]}},
            "required": ["expression"],
        },
    },
}


def _records(sim_url: str, job_id: str) -> list[dict[str, float]]:
    with urllib.request.urlopen(f"{sim_url}/_sim/requests?job={job_id}", timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def _gap(first: dict[str, float], second: dict[str, float]) -> float:
    return second["started"] - first["ended"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    with LocalStack() as stack:
        url = stack.start_redis()
        sim = stack.start_simulator()
        settings = Settings(redis_url=url, pool="threads", concurrency=4, tools="workers.tools.examples")
        env = stack.provider_env()
        resources = WorkerResources.build(settings, watch_cancels=False, provider_env=env)
        runner = JobRunner(resources)
        try:
            tool_cpu, pair_cpu, tool_gaps, pair_gaps = [], [], [], []
            for i in range(args.jobs + 10):  # the first 10 of each warm up
                job = CompletionJob(
                    id=f"tool-{uuid.uuid4().hex}", model=MODEL, messages=PROMPT, tools=["calculate"], stream=args.stream
                )
                t0 = time.process_time()
                result = runner.run(job).result
                t1 = time.process_time()
                assert result is not None and result.status == "succeeded" and result.turns == 2, result
                second_messages = [*PROMPT, *(m.model_dump(exclude_none=True) for m in result.messages[:2])]
                first = CompletionJob(
                    id=f"a-{uuid.uuid4().hex}", model=MODEL, messages=PROMPT, tools=[CALCULATE], stream=args.stream
                )
                second = CompletionJob(
                    id=f"b-{uuid.uuid4().hex}", model="openai:gpt-4o-mini", messages=second_messages, stream=args.stream
                )
                t2 = time.process_time()
                ra = runner.run(first).result
                rb = runner.run(second).result
                t3 = time.process_time()
                assert (
                    ra is not None and ra.finish_reason == "tool_calls" and rb is not None and rb.status == "succeeded"
                )
                assert rb.usage.prompt_tokens == result.usage.prompt_tokens - ra.usage.prompt_tokens  # same tokens
                if i < 10:
                    continue
                tool_cpu.append(t1 - t0)
                pair_cpu.append(t3 - t2)
                turns = _records(sim, job.id)
                tool_gaps.append(_gap(turns[0], turns[1]))
                pair_gaps.append(_gap(_records(sim, first.id)[0], _records(sim, second.id)[0]))
        finally:
            resources.close()

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:.2f} ms, p90 {sorted(values)[int(len(values) * 0.9)] * 1000:.2f} ms"

    cpu_ratio = statistics.median(tool_cpu) / statistics.median(pair_cpu)
    gap_ratio = statistics.median(tool_gaps) / statistics.median(pair_gaps)
    print(f"two-turn tool jobs ({args.jobs}, stream={args.stream}) vs the same two calls as plain jobs")
    print(f"  CPU per tool job:         {ms(tool_cpu)}")
    print(f"  CPU per plain-job pair:   {ms(pair_cpu)}")
    print(
        f"  ratio (tool / pair):      {cpu_ratio:.2f}x   (loop's own CPU per turn ~ "
        f"{(statistics.median(tool_cpu) - statistics.median(pair_cpu)) / 2 * 1000:+.2f} ms)"
    )
    print(f"  gap turn 1 -> turn 2:     {ms(tool_gaps)}")
    print(f"  gap job a -> job b:       {ms(pair_gaps)}")
    print(f"  ratio (tool / pair):      {gap_ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
