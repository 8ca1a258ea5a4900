"""``llmq jobs``: the job history, dead letters, replay and cancel.

    llmq jobs list [--status failed] [--error rate_limited] [--tenant T] [--model M] [--since 2h] [--limit N] [--json]
    llmq jobs dead [same filters]                 (the failed jobs, with their cause and replay state)
    llmq jobs show ID [--json]                    (request summary without message text, attempts, events, cost, trace id)
    llmq jobs replay [same filters] [--dry-run] [--include-copies] [--json]
    llmq jobs cancel ID [ID ...] [--wait S]     (queued or running jobs end ``cancelled``; exit 4 if an id is unknown)

The workers index every ended job for ``LLMQ_HISTORY_DAYS`` days (``workers/contract/history.py``).
``replay`` re-submits copies of the matching *failed* jobs with new ids linked to the originals
(``replay_of``); each original is replayed once, however often the command runs. A copy that failed
too is left alone unless ``--include-copies`` is given: running the same replay twice sends nothing
the second time, even when the copies failed again in between.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time

import redis

from llmq.commands.subscribe import EXIT_UNKNOWN_JOB, say_if_unknown
from llmq.commands.table import print_table
from producers.client import Client, ResultTimeoutError
from producers.history import HistoryEntry, HistoryQuery, JobHistory, drive, parse_since
from producers.replay import replay_steps
from producers.watermark import is_out_of_memory
from workers.contract import JobKeys, StreamEvent


def _since(raw: str) -> float:
    try:
        return parse_since(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _filters(p: argparse.ArgumentParser, *, status: bool = True) -> None:
    if status:
        p.add_argument("--status", choices=["succeeded", "failed", "cancelled"])
    p.add_argument("--error", metavar="TYPE", help="an error type (rate_limited, timeout, ...)")
    p.add_argument("--tenant")
    p.add_argument("--model", help="the model asked for or used")
    p.add_argument("--since", type=_since, metavar="WHEN", help="2h, 30m, 7d or an ISO date/time")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("jobs", help="job history, dead letters, replay and cancel")
    actions = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    _filters(actions.add_parser("list", help="ended jobs, newest first"))
    _filters(actions.add_parser("dead", help="dead letters: failed jobs, their cause and replay state"), status=False)
    show = actions.add_parser("show", help="one job: request summary, attempts, events, cost, trace id")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    replay = actions.add_parser("replay", help="re-submit the matching failed jobs once each, as linked copies")
    _filters(replay, status=False)
    replay.add_argument("--dry-run", action="store_true", help="say what would be submitted, submit nothing")
    replay.add_argument(
        "--include-copies", action="store_true", help="also replay failed copies of earlier replays (their own copy)"
    )
    cancel = actions.add_parser("cancel", help="cancel queued or running jobs (the worker aborts the call)")
    cancel.add_argument("job_ids", nargs="+", metavar="ID")
    cancel.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for each to end")
    p.set_defaults(func=run)


def _cancel(client: Client, job_ids: list[str], wait_s: float) -> int:
    """Ask each job to stop; say what each was and, with ``wait_s``, how it ended."""
    unknown = 0
    for job_id in job_ids:
        if say_if_unknown(client, job_id):
            unknown += 1
            continue
        state = client.status(job_id)
        if not client.cancel(job_id):
            ended = client.get_result(job_id)
            print(f"{job_id}: already ended ({ended.status if ended else 'ended'}); nothing to cancel")
            continue
        was = (state or {}).get("state", "queued")
        if wait_s <= 0:
            print(f"{job_id}: cancel requested (it was {was})")
            continue
        try:
            result = client.result(job_id, timeout=wait_s)
        except ResultTimeoutError as exc:
            print(f"{job_id}: cancel requested (it was {was}); not ended yet: {exc}")
            continue
        print(f"{job_id}: {result.status} (it was {was})")
    return EXIT_UNKNOWN_JOB if unknown else 0


def _query(args: argparse.Namespace, status: str | None) -> HistoryQuery:
    return HistoryQuery(
        tenant=args.tenant, status=status, model=args.model, error=args.error, since=args.since, limit=args.limit
    )


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _entry_json(entry: HistoryEntry) -> str:
    data = entry.summary.model_dump(mode="json")
    data["replayed_as"] = entry.replayed_as
    return json.dumps(data)


def _print_list(entries: list[HistoryEntry], *, dead: bool) -> None:
    header = ["ended (UTC)", "id", "tenant", "status", "model", "error", "cost_usd", "attempts"]
    if dead:
        header = [*header[:5], "cause", "replayed_as"]
    rows = [header]
    for e in entries:
        s = e.summary
        error = s.error.type if s.error else ""
        row = [_when(s.finished_at), s.id, s.tenant, s.status, s.model_used or s.model]
        if dead:
            cause = f"{error}: {s.error.message}" if s.error else ""
            row += [cause[:80], e.replayed_as or ""]
        else:
            cost = f"{s.cost_usd:.6f}" if s.cost_usd is not None else "-"
            row += [error, cost, str(len(s.attempts))]
        rows.append(row)
    print_table(rows)


def _show(client: Client, history: JobHistory, job_id: str, as_json: bool) -> int:
    entry = history.get(job_id)
    if entry is None:
        state = client.status(job_id)
        if state is None:
            print(f"llmq: no job {job_id} in the history or in Redis", file=sys.stderr)
            return 1
        print(f"{job_id}: {state.get('state')} (not ended yet)")
        return 0
    events: list[StreamEvent] = []
    entries = client.redis.xrange(JobKeys(job_id).events, count=10_000)
    if entries:
        events, _ = client.parse_page(entries)
    delivery = history.delivery(job_id)
    if as_json:
        data = json.loads(_entry_json(entry))
        data["events"] = [{"seq": e.seq, "type": e.type, "run": e.run, "ts": e.ts} for e in events]
        data["webhook"] = delivery
        print(json.dumps(data))
        return 0
    s = entry.summary
    r = s.request
    print(f"job        {s.id}")
    print(f"tenant     {s.tenant}")
    print(f"status     {s.status}" + (f" ({s.error.type}: {s.error.message})" if s.error else ""))
    print(f"model      {s.model}" + (f" -> {s.model_used}" if s.model_used and s.model_used != s.model else ""))
    if s.fallbacks:
        print(f"fallbacks  {', '.join(s.fallbacks)}")
    print(f"submitted  {_when(s.submitted_at)}   ended {_when(s.finished_at)}   run {s.run}")
    t = s.timings
    spans = [
        (name, v)
        for name, v in (("queued", t.queued_s), ("first token", t.ttft_s), ("total", t.total_s))
        if v is not None
    ]
    print("timings    " + (", ".join(f"{name} {v} s" for name, v in spans) or "-"))
    u = s.usage
    cost = f"${s.cost_usd:.6f}" if s.cost_usd is not None else "-"
    print(f"usage      {u.prompt_tokens} prompt + {u.completion_tokens} completion tokens, cost {cost}")
    print(f"trace id   {s.trace_id or '-'}")
    what = f"{r.messages} messages" if r.messages else (f"prompt {r.prompt}" if r.prompt else "template")
    tools = f", tools {', '.join(r.tools)}" if r.tools else ""
    print(f"request    {what}, max_tokens {r.max_tokens}, stream {r.stream}{tools}")
    if r.metadata:
        print(f"metadata   {json.dumps(r.metadata)}")
    if s.replay_of:
        print(f"replay of  {s.replay_of}")
    if entry.replayed_as:
        print(f"replayed   as {entry.replayed_as}")
    print(f"attempts   {len(s.attempts)}")
    for a in s.attempts:
        print(f"  - {a.model} {a.status} {a.error_type or ''} {a.http_status or ''} wait {a.wait_s} s".rstrip())
    if events:
        counts: dict[str, int] = {}
        for e in events:
            counts[e.type] = counts.get(e.type, 0) + 1
        print("events     " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    else:
        print("events     (expired with the result)")
    if delivery is not None:
        print(f"webhook    {delivery['target']}: {delivery['state']} after {delivery['attempts']} attempt(s)")
        for a in delivery["log"]:
            print(f"  - #{a['attempt']} {_when(a['at'])} {a['outcome']} {a.get('status') or a.get('error') or ''}")
    return 0


def _originals(history: JobHistory, query: HistoryQuery) -> tuple[list[HistoryEntry], int]:
    """Up to ``query.limit`` matching jobs that are not replays' copies, and how many copies were passed over."""
    found: list[HistoryEntry] = []
    copies = 0
    page_query = query
    while len(found) < query.limit:
        page = history.list(page_query)
        for entry in page:
            if entry.summary.replay_of:
                copies += 1
            elif len(found) < query.limit:
                found.append(entry)
        if len(page) < page_query.limit:
            break
        page_query = dataclasses.replace(page_query, before=page[-1].summary.finished_at)
    return found, copies


def _replay(client: Client, history: JobHistory, args: argparse.Namespace) -> int:
    query = _query(args, "failed")
    if args.include_copies:
        entries, copies = history.list(query), 0
    else:
        entries, copies = _originals(history, query)
    failed = 0
    for entry in entries:
        steps = replay_steps(entry, now=time.time(), dry_run=args.dry_run)
        try:
            outcome = drive(steps, client.redis, history.script, client.submit)
        except redis.RedisError as exc:  # the replay's record refused at maxmemory: exit 75 as a submit
            if not is_out_of_memory(exc):
                raise
            raise client.full_error("recording the replay") from exc
        failed += outcome.outcome == "refused"
        if args.json:
            print(json.dumps(outcome.as_dict()))
        else:
            copy = f" -> {outcome.copy}" if outcome.copy else ""
            detail = f" ({outcome.detail})" if outcome.detail else ""
            print(f"{outcome.original}{copy}: {outcome.outcome.replace('_', ' ')}{detail}")
    if copies:
        print(f"llmq: {copies} failed cop{'y' if copies == 1 else 'ies'} of earlier replays left alone "
              "(--include-copies replays them)", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    with Client() as client:
        history = JobHistory(client.redis, days=client.settings.history_days)
        if args.jobs_command == "show":
            return _show(client, history, args.job_id, args.json)
        if args.jobs_command == "replay":
            return _replay(client, history, args)
        if args.jobs_command == "cancel":
            return _cancel(client, args.job_ids, args.wait)
        status = "failed" if args.jobs_command == "dead" else args.status
        entries = history.list(_query(args, status))
        if args.json:
            for entry in entries:
                print(_entry_json(entry))
        elif entries:
            _print_list(entries, dead=args.jobs_command == "dead")
        else:
            print("no jobs match", file=sys.stderr)
    return 0
