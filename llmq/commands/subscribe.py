"""``llmq subscribe JOB_ID``: follow a job's events (replayed from the start, then live).

A job still queued after ``LLMQ_WORKER_CHECK_S`` (3 s) with no live worker on the queue it was sent
to is said on stderr once, naming the queues live workers do consume; the wait goes on.

Exit status: 0 the job succeeded; 1 it failed or was cancelled; 3 ``--timeout`` passed first (the
message says whether the job is still queued with no worker on its queue, or running);
4 no such job in this Redis (never submitted there, or its records expired), or its records vanished
while it was followed (Redis lost its data). A reader that goes
away (``llmq subscribe --json ID | head``) ends it quietly (``llmq/cli.py``).
"""

from __future__ import annotations

import argparse
import sys

from llmq.commands.answerprint import DeltaPrinter
from llmq.commands.submit import watch_for_workers
from producers.client import Client, JobLostError, ResultTimeoutError
from workers.contract import JobKeys
from workers.contract.redaction import shown_url

#: The job id names no job in this Redis.
EXIT_UNKNOWN_JOB = 4


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("subscribe", help="follow a job's events until its terminal event")
    p.add_argument("job_id")
    p.add_argument("--from-seq", type=int, default=0, help="resume after a disconnect")
    p.add_argument("--json", action="store_true", help="print every event as a JSON line")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=run)


def say_if_unknown(client: Client, job_id: str) -> bool:
    """True, said on stderr, when ``job_id`` names no job in this Redis (also ``llmq jobs cancel``'s)."""
    if client.redis.exists(*JobKeys(job_id).records):
        return False
    hint = "" if ":" in job_id else " (a job submitted through the gateway with an id of yours is '<tenant>:<id>')"
    print(
        f"llmq: no job {job_id!r} in Redis at {shown_url(client.redis_url)}: it was never submitted there, "
        f"or its records expired (LLMQ_RESULT_TTL_S){hint}",
        file=sys.stderr,
    )
    return True


def run(args: argparse.Namespace) -> int:
    with Client() as client:
        client.no_worker_notice_s = None  # watch_for_workers says it, on stderr
        if say_if_unknown(client, args.job_id):
            return EXIT_UNKNOWN_JOB
        status: int | None = None
        watching = watch_for_workers(client, args.job_id, client.settings.worker_check_s, args.timeout)
        printer = DeltaPrinter()
        try:
            for event in client.stream(args.job_id, from_seq=args.from_seq, timeout=args.timeout):
                if args.json:
                    print(event.model_dump_json(), flush=True)
                else:
                    printer.feed(event)
                    if event.type == "error":
                        print(f"\nllmq: error {event.error.type}: {event.error.message}", file=sys.stderr)
                    elif event.type == "cancelled":
                        print("\nllmq: cancelled", file=sys.stderr)
                    elif event.type == "done":
                        printer.end_line()
                if event.type in ("done", "error", "cancelled"):
                    status = 0 if event.type == "done" else 1
        except JobLostError as exc:  # its records vanished from Redis while followed
            print(f"\nllmq: {exc}", file=sys.stderr)
            return EXIT_UNKNOWN_JOB
        except ResultTimeoutError as exc:
            print(f"llmq: {exc}", file=sys.stderr)
            return 3
        finally:
            watching.set()
        if status is not None:
            return status
        # nothing from --from-seq on: the job had ended before it
        result = client.get_result(args.job_id)
        state = result.status if result is not None else "ended"
        print(f"llmq: job {args.job_id} {state} before seq {args.from_seq}: nothing more to show", file=sys.stderr)
        return 0 if result is not None and result.status == "succeeded" else 1
