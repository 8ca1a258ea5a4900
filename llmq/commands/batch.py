"""``llmq batch IN.jsonl -o OUT.jsonl``: run a prompt file (OpenAI Batch, Anthropic or plain lines).

Exit status: 0 every line of the file has a successful result (of this run or an earlier one); 1 some
lines failed or were invalid, in this run or an earlier one (see the errors file);
2 the input did not validate (nothing was enqueued) or a file cannot be resumed from;
3 stopped by ``--stall-timeout``; 130 interrupted (rerun the same command to continue).
"""

from __future__ import annotations

import argparse
import os
import sys

from llmq.commands.params import priority_arg
from producers.batch import BatchFileError, BatchProgress, BatchValidationError, run_batch
from workers.contract.schedule import PRIORITIES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "batch",
        help="run a JSONL prompt file and write OpenAI Batch output (resumable)",
        description=(
            "Run every line of IN.jsonl (OpenAI Batch lines, Anthropic Message Batches request entries, or "
            '{"custom_id", "prompt"} lines) and write OpenAI Batch output lines. Rerunning the same command '
            "skips every custom_id already written."
        ),
    )
    p.add_argument("input", metavar="IN.jsonl")
    p.add_argument("-o", "--output", required=True, metavar="OUT.jsonl")
    p.add_argument("--errors", metavar="ERR.jsonl", help="failed and invalid lines (default OUT.errors.jsonl)")
    p.add_argument(
        "--model",
        "-m",
        help="model for lines that name none (provider:model, a route alias or a bare name such as gpt-4o-mini)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=os.environ.get("LLMQ_BATCH_WINDOW"),
        help=(
            "jobs in flight at most (default 256, with --via provider|auto 100000: lines waiting in a provider "
            "batch hold no worker); keep it above the workers' total concurrency"
        ),
    )
    p.add_argument("--skip-invalid", action="store_true", help="write invalid lines to the errors file and go on")
    p.add_argument("--batch-id", help="names the batch's jobs (default: derived from the IN and OUT paths)")
    p.add_argument("--tenant", help="tenant for every job (budget scope)")
    p.add_argument(
        "--priority",
        type=priority_arg,
        choices=PRIORITIES,
        default="bulk",
        help="scheduling class of lines that name none (a line's 'priority' field wins; default bulk)",
    )
    p.add_argument(
        "--via",
        choices=("queue", "provider", "auto"),
        default="queue",
        help=(
            "queue: every line live (default); provider: lines wait for a provider batch (OpenAI Batch, Anthropic "
            "Message Batches: half the price, within 24 h); auto: a provider batch when a line's deadline leaves "
            "room for it, else live. A line's own 'batch' field wins"
        ),
    )
    p.add_argument(
        "--deadline",
        type=float,
        metavar="S",
        help="seconds from submission a line may take (deadline_s) for lines that name none",
    )
    p.add_argument("--stall-timeout", type=float, metavar="S", help="stop when no result arrives for S seconds")
    p.add_argument("--progress-interval", type=float, default=10.0, metavar="S", help="seconds between plain lines")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress, no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    progress = BatchProgress(sys.stderr, plain_interval_s=args.progress_interval, enabled=not args.quiet)
    try:
        summary = run_batch(
            args.input,
            args.output,
            errors_path=args.errors,
            model=args.model,
            window=args.window if args.window is not None else (256 if args.via == "queue" else 100_000),
            skip_invalid=args.skip_invalid,
            batch_id=args.batch_id,
            tenant=args.tenant,
            priority=args.priority,
            progress=progress,
            stall_timeout_s=args.stall_timeout,
            via=args.via,
            deadline_s=args.deadline,
        )
    except BatchValidationError as exc:
        print(f"llmq batch: {args.input}: {exc}", file=sys.stderr)
        print("llmq batch: fix the lines, or pass --skip-invalid to write them to the errors file", file=sys.stderr)
        return 2
    except (BatchFileError, ValueError, OSError) as exc:
        print(f"llmq batch: {exc}", file=sys.stderr)
        return 2
    if summary.stalled:
        return 3
    if summary.interrupted:
        return 130
    return 0 if summary.all_succeeded else 1
