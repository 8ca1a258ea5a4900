"""``llmq subscribe JOB_ID``: follow a job's events (replayed from the start, then live)."""

from __future__ import annotations

import argparse
import sys

from producers.client import Client, ResultTimeoutError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("subscribe", help="follow a job's events until its terminal event")
    p.add_argument("job_id")
    p.add_argument("--from-seq", type=int, default=0, help="resume after a disconnect")
    p.add_argument("--json", action="store_true", help="print every event as a JSON line")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    status = 0
    with Client() as client:
        try:
            for event in client.stream(args.job_id, from_seq=args.from_seq, timeout=args.timeout):
                if args.json:
                    print(event.model_dump_json(), flush=True)
                elif event.type == "delta":
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif event.type == "error":
                    print(f"\nllmq: error {event.error.type}: {event.error.message}", file=sys.stderr)
                    status = 1
                elif event.type == "cancelled":
                    print("\nllmq: cancelled", file=sys.stderr)
                    status = 1
                elif event.type == "done" and not args.json:
                    sys.stdout.write("\n")
        except ResultTimeoutError as exc:
            print(f"llmq: {exc}", file=sys.stderr)
            return 3
    return status
