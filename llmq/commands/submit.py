"""``llmq submit``: enqueue one prompt, print its deltas live (``--stream``) and its result.

The prompt is a text (one user message, with ``--system``) or a published prompt:
``llmq submit --use summarize@production --var text=...`` (``NAME``, ``NAME@3`` or ``NAME@label``).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from typing import Any

from llmq.commands.answerprint import DeltaPrinter
from llmq.commands.params import add_param_args, apply_params, priority_arg
from llmq.commands.prompts import parse_vars
from producers.catalog import live_presences
from producers.client import Client, InvalidJobError, JobLostError, ResultTimeoutError
from workers.contract import JobKeys
from workers.contract.schedule import PRIORITIES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("submit", help="submit one prompt and wait for its result")
    p.add_argument("prompt", nargs="?", help="the user message (or --use a published prompt)")
    p.add_argument("--use", metavar="NAME[@N|@label]", help="a published prompt (llmq prompts push) instead of text")
    p.add_argument("--var", action="append", default=[], metavar="K=V", help="a --use variable (JSON for non-strings)")
    p.add_argument(
        "--model", "-m", default="default", help="provider:model, a route alias or a bare name such as gpt-4o-mini"
    )
    p.add_argument("--fallback", action="append", default=[], metavar="MODEL", help="repeatable")
    p.add_argument("--system", help="a system message")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float)
    p.add_argument("--tenant", default="default")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="a spend tag (repeatable)")
    p.add_argument(
        "--priority",
        type=priority_arg,
        choices=PRIORITIES,
        default="normal",
        help="scheduling class (classes share workers by weight)",
    )
    p.add_argument("--concurrency-key", metavar="KEY", help="jobs with one key run at most N at once (config)")
    p.add_argument("--id", help="job id (idempotency key)")
    p.add_argument("--stream", action="store_true", help="print deltas as they arrive")
    p.add_argument("--json", action="store_true", help="print the CompletionResult as one JSON object")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--no-wait", action="store_true", help="print the job id and exit")
    add_param_args(p)
    p.set_defaults(func=run)


#: A published prompt's version number and variable schema for ``(name, ref)`` (ref: a number, a label or None).
SchemaLookup = Callable[[str, "str | None"], tuple[int, dict[str, Any]]]


def build_job(args: argparse.Namespace, schema_for: SchemaLookup | None = None) -> dict[str, Any]:
    """The job for the command line; ``ValueError`` for a contradictory one."""
    job: dict[str, Any] = {
        "model": args.model,
        "fallbacks": args.fallback,
        "max_tokens": args.max_tokens,
        "tenant": args.tenant,
        "priority": args.priority,
        "stream": bool(args.stream) or not args.json,
    }
    if args.tag:
        job["tags"] = list(args.tag)
    if args.concurrency_key:
        job["concurrency_key"] = args.concurrency_key
    if args.use:
        if args.prompt is not None or args.system:
            raise ValueError("--use sends a published prompt's own messages: give no PROMPT text or --system")
        name, _, which = args.use.partition("@")
        number, schema = schema_for(name, which or None) if schema_for is not None else (None, {})
        ref: dict[str, Any] = {"name": name, "variables": parse_vars(args.var, schema)}
        if which and not which.isdigit() and which != "latest":
            ref["label"] = which  # resolved per job id by the client (a label may split traffic)
        else:
            ref["version"] = int(which) if which.isdigit() else number
        job["prompt"] = ref
        if args.model == "default":
            del job["model"]  # the version's defaults may name one
    else:
        if args.prompt is None:
            raise ValueError("give the PROMPT text, or --use NAME[@N|@label] for a published prompt")
        if args.var:
            raise ValueError("--var fills a published prompt's variables: use it with --use")
        messages = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        messages.append({"role": "user", "content": args.prompt})
        job["messages"] = messages
    if args.temperature is not None:
        job["temperature"] = args.temperature
    if args.id:
        job["id"] = args.id
    return apply_params(args, job)


def watch_for_workers(client: Client, job_id: str, after_s: float, timeout: float | None) -> threading.Event:
    """After ``after_s`` without the job starting, say on stderr if no worker consumes its queue (the
    queue it was sent to, with the queues live workers do consume).

    Runs on a daemon thread; set the returned event to stop it. It only speaks: the caller keeps
    waiting until its own timeout (a worker may still come). ``llmq submit`` and ``llmq subscribe``.
    """
    done = threading.Event()

    def check() -> None:
        if done.wait(after_s):
            return
        try:
            if client.redis.exists(JobKeys(job_id).events):
                return  # a worker started it
            queue = client.queue_of(client.status(job_id))
            presences = live_presences(client.redis)
        except Exception:  # a hint only; the wait itself reports real failures
            return
        if not client.workers_of(presences, queue) and not done.is_set():
            waiting = "still waiting" if timeout is None else f"still waiting up to {timeout:g}s"
            line = f"llmq: job {job_id} is queued, but {client.no_worker_text(queue, presences)}; {waiting}"
            print(line, file=sys.stderr, flush=True)

    threading.Thread(target=check, name="llmq-worker-check", daemon=True).start()
    return done


def _say_if_no_worker(client: Client) -> None:
    """``--no-wait``: the job is queued; say at once (stderr) when no live worker consumes its queue."""
    try:
        presences = live_presences(client.redis)
    except Exception:  # a hint only
        return
    if not client.workers_of(presences):
        print(f"llmq: queued, but {client.no_worker_text(client.queue, presences)}", file=sys.stderr)


def published_schema(client: Client) -> SchemaLookup:
    """The schema of the version ``llmq prompts show NAME@REF`` would show (for typing ``--var`` values)."""
    from workers.prompts.store import PromptStore

    store = PromptStore(client.redis)

    def lookup(name: str, ref: str | None) -> tuple[int, dict[str, Any]]:
        version = store.resolve(name, ref)
        return version.version, dict(version.input)

    return lookup


def run(args: argparse.Namespace) -> int:
    with Client() as client:
        client.no_worker_notice_s = None  # watch_for_workers says it, on stderr
        try:
            handle = client.submit(build_job(args, published_schema(client)))
        except (InvalidJobError, LookupError, ValueError) as exc:
            print(f"llmq: {exc}", file=sys.stderr)
            return 2
        if args.no_wait:
            print(handle.id)
            _say_if_no_worker(client)
            return 0
        watching = watch_for_workers(client, handle.id, client.settings.worker_check_s, args.timeout)
        try:
            if args.stream and not args.json:
                printer = DeltaPrinter()
                for event in handle.stream(timeout=args.timeout):
                    printer.feed(event)
                printer.end_line()
            result = handle.result(timeout=args.timeout)
        except JobLostError as exc:  # its records vanished from Redis while it was awaited
            print(f"llmq: {exc}", file=sys.stderr)
            return 4
        except ResultTimeoutError as exc:
            print(f"llmq: {exc}", file=sys.stderr)
            return 3
        except KeyboardInterrupt:  # the job is queued or running: say which, and how to find it again
            print(
                f"interrupted; job {handle.id} is not cancelled (it runs): llmq subscribe {handle.id}", file=sys.stderr
            )
            return 130
        finally:
            watching.set()
    if args.json:
        print(result.model_dump_json())
    elif not args.stream:
        print(result.content if result.refusal is None else f"(refused) {result.refusal}")
    if result.status != "succeeded":
        error = result.error
        detail = f"{error.type}: {error.message}" if error else result.status
        print(f"llmq: job {result.id} {result.status}: {detail}", file=sys.stderr)
        return 1
    return 0
