"""The batcher: every worker process runs one, one at a time across the workers does the work.

A thread of the worker (started with it, nothing for the operator to run) takes a lease in Redis
(``llmq:{pbatch}:lock``) every ``tick_s`` and, while it holds it, moves every provider batch one or
more steps on (``workers/jobs/batchstate.py`` has the state, ``workers/jobs/batched.py`` the jobs'
side):

1. **seal**: a group (``provider:model``) whose oldest waiting line is ``[batch] max_age_s`` old, or
   that holds ``max_lines``, becomes a batch with a fresh key;
2. **prepare**: its lines are fixed: a job cancelled meanwhile is dropped (sent back to the queue,
   where its run ends it ``cancelled``), one whose deadline is already within ``live_margin_s`` runs
   live, the others are numbered (line *i* is ``<key>-<i>``);
3. **upload** (OpenAI): the JSONL file, its name carrying the key; a batcher killed before it learned
   the file's id finds it again by name and size;
4. **create**: the provider batch; a lost reply is found again (OpenAI: by the key in its metadata;
   Anthropic: by size and creation time, never a batch we already own);
5. **poll** every ``poll_s``: a line whose job's deadline is within ``live_margin_s`` goes live (sent
   back to the queue, the reservation kept for the line's late answer); once the batch ended,
6. **collect**: each result line is filed into its job's hash and the job sent back to the queue,
   where its run ends it (a line the provider reported nothing for expired); a line whose job
   already ended (cancelled, or gone live) has its cost settled here. Then the provider's files
   are deleted.

Each step is recorded before and after it runs; a step repeated after a crash changes nothing, and a
job sent back twice ends once (its stored result stops the second run). A step that keeps failing
(``MAX_FAILURES`` times) sends the batch's lines live, so no job waits for a batch that cannot be made.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from celery import Celery

from workers.connections.brokerurl import is_amqp
from workers.contract import TASK_NAME, monitor_repr, split_model_id
from workers.contract.schedule import DEFAULT_PRIORITY, SCHED_HEADER, class_queue, sched_header
from workers.jobs.batched import BatchLane, model_discounts
from workers.jobs.batchend import LineEnder
from workers.jobs.batchintake import LineIntake
from workers.jobs.batchstate import BatchRecord, BatchStore, JobLine
from workers.jobs.resources import JobResources
from workers.llm.batchapi import BatchAPI, LineOutcome, RemoteBatch, line_id, line_index
from workers.llm.errors import LLMQError
from workers.settings import Settings

__all__ = ["MAX_FAILURES", "Batcher", "job_sender", "start_batcher"]

log = logging.getLogger("llmq.batcher")

#: Failed attempts of one batch's step before its lines are sent live instead.
MAX_FAILURES = 5
#: Lines filed back per round trip.
FILE_CHUNK = 500
#: Handed-over jobs taken per round trip set (``workers/jobs/batchintake.py``).
INTAKE_CHUNK = 1000

#: A Celery task event: its type and fields (what Flower shows of the jobs the batcher takes and ends).
TaskEvent = tuple[str, dict[str, Any]]

Send = Callable[[dict[str, Any]], None]


class Batcher:
    """Moves the provider batches on (module docstring). ``send`` puts a job's payload on the queue
    again; ``clock`` is unix seconds (the same clock as the jobs' deadlines)."""

    def __init__(
        self,
        store: BatchStore,
        lane: BatchLane,
        send: Send,
        *,
        clock: Callable[[], float] = time.time,
        tick_s: float | None = None,
        owner: str | None = None,
        ender: LineEnder | None = None,
        task_events: Callable[[list[TaskEvent]], None] | None = None,
        events_delay_s: float = 0.0,
        intake: LineIntake | None = None,
        monitor_content: bool = False,
    ) -> None:
        self.store = store
        #: Flower's task-received shows the job's content too (``LLMQ_MONITOR_CONTENT``).
        self._monitor_content = monitor_content
        #: Takes the jobs producers handed straight to the lane (None: they wait on the intake list).
        self._intake = intake
        #: Ends answered lines in bulk (None: every answered line's job goes to the queue to end).
        self._ender = ender
        #: Sends the Celery task events of the jobs the batcher ended (Flower's view).
        self._task_events = task_events
        #: How long after a batch was sealed its ended jobs' task events may go out.
        self.events_delay_s = events_delay_s
        self._held_events: list[tuple[float, list[TaskEvent]]] = []
        #: The bodies of the batch last prepared, in line order (its upload or creation sends them).
        self._bodies: tuple[str, list[str], list[bytes]] = ("", [], [])
        self.lane = lane
        self.config = lane.config
        self._send = send
        self._clock = clock
        self.tick_s = tick_s if tick_s is not None else min(1.0, self.config.poll_s, max(self.config.max_age_s, 0.05))
        self.owner = owner or uuid.uuid4().hex
        self._stop = threading.Event()
        #: Set while a pass holds the lease (the renewing thread keeps it).
        self._working = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the thread -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llmq-batcher", daemon=True)
        self._thread.start()
        # the lease is renewed while a pass runs, however long one upload or download takes
        threading.Thread(target=self._renew, name="llmq-batcher-lease", daemon=True).start()

    def _renew(self) -> None:
        while not self._stop.wait(self.config.lock_s / 3):
            if self._working.is_set():
                try:
                    self._hold()
                except Exception:  # Redis away: the pass itself fails and is tried again
                    log.debug("batcher: renewing the lease failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._send_due_events()
        try:
            self.store.free_lock(self.owner)
        except Exception:  # Redis gone at shutdown: the lease runs out by itself
            log.debug("batcher: could not free the lock at shutdown", exc_info=True)

    def _loop(self) -> None:
        last_error = ""
        while not self._stop.wait(self.tick_s):
            self._working.set()
            try:
                self.tick()
                last_error = ""
            except redis.RedisError as exc:  # Redis away or full: said once, tried again every tick
                if str(exc) != last_error:
                    log.warning("batcher: Redis refused a pass (%s: %s); trying again", type(exc).__name__, exc)
                last_error = str(exc)
            except Exception:
                log.exception("batcher: a pass failed; trying again in %.1f s", self.tick_s)
            finally:
                self._working.clear()

    # --- one pass ---------------------------------------------------------------------------------

    def tick(self) -> bool:
        """One pass over the groups and batches, if this batcher holds the lock; whether it did."""
        self._send_due_events()
        if self.store.idle():  # nothing waits and nothing runs: no lock taken, nothing written
            return False
        if not self._hold():
            return False
        config = self.config
        self._take_handed()
        for group in self.store.due_groups(max_age_s=config.max_age_s, max_lines=config.max_lines):
            self._seal(group)
        for key in self.store.due_batches():
            if self._stop.is_set() or not self._hold():
                break
            self._advance(key)
        return True

    def _hold(self) -> bool:
        return self.store.take_lock(self.owner, self.config.lock_s)

    def _take_handed(self) -> None:
        """Take the jobs producers handed to the lane, in order, a chunk at a time; the ids leave
        the intake list only once taken (a batcher killed meanwhile leaves them to the next)."""
        if self._intake is None:
            return
        while not self._stop.is_set():
            ids = self.store.handed(INTAKE_CHUNK)
            if not ids:
                return
            taken = self._intake.take(ids)
            self.store.took(len(ids))
            if taken.parked and self._task_events is not None:
                self._task_events(started_events(taken.parked, self._monitor_content))
            if taken.parked or taken.queued:
                log.info(
                    "batcher: took %d handed-over job(s) into batch groups, sent %d to the queue",
                    len(taken.parked),
                    len(taken.queued),
                )
            if len(ids) < INTAKE_CHUNK or taken.later or not self._hold():
                return

    def _seal(self, group: str) -> None:
        api = self.lane.api_for(group)
        limit = min(self.config.max_lines, api.max_lines if api is not None else self.config.max_lines)
        provider, native = split_model_id(group)
        key = "b" + uuid.uuid4().hex[:20]
        count = self.store.seal(group, key, max_lines=limit, provider=provider, model=native)
        if count:
            log.info("batcher: %d line(s) of %s sealed into batch %s", count, group, key)

    def _advance(self, key: str) -> None:
        record = self.store.batch(key)
        if record is None:
            self.store.redis.zrem(self.store.active, key)
            return
        api = self.lane.api_for(record.group)
        if api is None:  # the provider is no longer configured: its lines run live (where they fail typed)
            self._all_live(record)
            return
        try:
            self._steps(record, api)
        except (LLMQError, OSError, ValueError) as exc:
            failures = int(self.store.redis.hincrby(self.store.batch_hash(key), "failures", 1))
            log.warning(
                "batcher: batch %s at step %s failed (%d/%d): %s", key, record.state, failures, MAX_FAILURES, exc
            )
            if failures >= MAX_FAILURES:
                latest = self.store.batch(key) or record
                self._all_live(latest)
            else:
                self.store.next_look(key, self.config.poll_s * failures)

    def _steps(self, record: BatchRecord, api: BatchAPI) -> None:
        key = record.key
        while True:
            state = record.state
            if state == "sealed":
                self._prepare(record)
            elif state in ("prepared", "uploading"):
                if api.uploads:
                    self._upload(record, api)
                else:
                    self.store.update(key, state="uploaded")
            elif state in ("uploaded", "creating"):
                self._create(record, api)
                return
            elif state == "running":
                self._poll(record, api)
                return
            else:  # finished
                self.store.redis.zrem(self.store.active, key)
                return
            latest = self.store.batch(key)
            if latest is None:
                return
            record = latest
            self._hold()

    # --- steps ---------------------------------------------------------------------------------------

    def _prepare(self, record: BatchRecord) -> None:
        key = record.key
        ids = list(dict.fromkeys(self.store.sealed_jobs(key)))
        lines, cancelled = self.store.lines_and_cancels(ids)
        keep: list[str] = []
        bodies: list[bytes] = []
        deadlines: dict[str, float] = {}
        dropped: list[JobLine] = []
        hurried: list[JobLine] = []
        near = self._clock() + self.config.live_margin_s
        for line, cancel in zip(lines, cancelled, strict=True):
            if line is None:
                continue  # its record expired: nothing to send, nobody waiting
            # a step repeated after a crash finds its own earlier choices by the key
            ours = line.state == "pending" or (line.state in ("sent", "dropped", "live") and line.key == key)
            if not ours:
                continue
            if line.state == "dropped" or (cancel and line.state != "live"):
                dropped.append(line)
                continue
            if line.state == "live" or (line.deadline is not None and line.deadline <= near):  # waited too long
                hurried.append(line)
                continue
            keep.append(line.job_id)
            bodies.append(line.body)
            if line.deadline is not None:
                deadlines[line.job_id] = line.deadline
        pipe = self.store.redis.pipeline(transaction=False)
        for index, job_id in enumerate(keep):
            self.store.move_on(pipe, job_id, ("pending", "sent"), {"state": "sent", "key": key, "index": index})
        for line in dropped:
            self.store.move_on(pipe, line.job_id, ("pending",), {"state": "dropped", "key": key})
        for line in hurried:
            self.store.move_on(pipe, line.job_id, ("pending", "sent"), {"state": "live", "key": key})
        pipe.execute()
        # dropped before it was sent: its run ends it cancelled, nothing billed; hurried: it runs live
        for line in (*dropped, *hurried):
            self.lane.release(line)
        self._send_back([line.job_id for line in (*dropped, *hurried)])
        self.store.fix_lines(key, keep, deadlines)
        # what the upload or creation sends next, read already (a batcher after a crash reads it again)
        self._bodies = (key, keep, bodies)
        if not keep:
            self.store.finish(key, ids)
        else:
            log.info("batcher: batch %s holds %d line(s) (%d dropped)", key, len(keep), len(dropped))

    def _line_bytes(self, key: str, api: BatchAPI) -> list[bytes]:
        ids = self.store.sent_lines(key)
        held_key, held_ids, held = self._bodies
        found: Sequence[bytes | None] = held if held_key == key and held_ids == ids else self.store.bodies(ids)
        out: list[bytes] = []
        for index, body in enumerate(found):
            if body is None:  # expired meanwhile (a batch left for longer than its keep time)
                raise ValueError(f"batch {key}: the line of job {ids[index]} is gone")
            out.append(api.wrap(line_id(key, index), body))
        return out

    def _upload(self, record: BatchRecord, api: BatchAPI) -> None:
        key = record.key
        lines = self._line_bytes(key, api)
        if record.state == "uploading":  # a batcher died while uploading: did the file arrive?
            size = sum(len(line) + 1 for line in lines)
            found = api.find_upload(key, since=record.upload_since, size=size)
            if found is not None:
                log.info("batcher: batch %s: found its upload %s again", key, found)
                self.store.update(key, upload=found, state="uploaded")
                return
        self.store.update(key, state="uploading", upload_since=self._clock())
        upload = api.upload(key, lines)
        self.store.update(key, upload=upload or "", state="uploaded")

    def _create(self, record: BatchRecord, api: BatchAPI) -> None:
        key = record.key
        remote: RemoteBatch | None = None
        if record.state == "creating":  # a batcher died while creating: was the batch made?
            known = self.store.known_remotes(record.provider)
            remote = api.find(key, since=record.create_since, lines=record.lines, known=known)
            if remote is not None:
                log.info("batcher: batch %s: found its provider batch %s again", key, remote.id)
        if remote is None:
            self.store.update(key, state="creating", create_since=self._clock())
            lines = [] if api.uploads else self._line_bytes(key, api)
            remote = api.create(key, record.model, record.upload or None, lines)
        self.store.add_remote(record.provider, remote.id)
        self.store.update(key, remote=remote.id, state="running", status=remote.status)
        self.store.next_look(key, self.config.poll_s)
        log.info("batcher: batch %s sent as %s (%d line(s))", key, remote.id, record.lines)

    def _poll(self, record: BatchRecord, api: BatchAPI) -> None:
        key = record.key
        near = self.store.approaching(key, self._clock() + self.config.live_margin_s)
        if near:
            gone = [j for j in near if self.store.move(j, ("sent",), {"state": "live"})]
            self._send_back(gone)
            self.store.forget_deadlines(key, near)
            if gone:
                log.info("batcher: batch %s: %d line(s) go live, their deadlines are near", key, len(gone))
        remote = api.get(record.remote)
        self.store.update(key, status=remote.status)
        if remote.state == "ended":
            self._collect(record, api, remote)
        elif remote.state == "failed":
            log.warning("batcher: batch %s failed at the provider (%s); its lines run live", key, remote.reason)
            self._all_live(record)
        else:
            self.store.next_look(key, self.config.poll_s)

    def _collect(self, record: BatchRecord, api: BatchAPI, remote: RemoteBatch) -> None:
        key = record.key
        ids = self.store.sent_lines(key)
        seen: set[int] = set()
        rows: list[tuple[str, LineOutcome, bytes]] = []
        for raw in api.result_lines(remote):
            try:
                outcome = api.outcome(raw, record.model)
            except ValueError as exc:
                log.warning("batcher: batch %s: a result line that does not parse: %s", key, str(exc)[:200])
                continue
            if outcome is None:
                continue
            index = line_index(key, outcome.custom_id)
            if index is None or index >= len(ids) or index in seen:
                continue  # not ours, or a repeat
            seen.add(index)
            rows.append((ids[index], outcome, raw))
            if len(rows) >= FILE_CHUNK:
                self._file(rows, record)
                rows = []
                self._hold()
        rows += [(ids[i], LineOutcome(line_id(key, i), "expired"), b"") for i in range(len(ids)) if i not in seen]
        for start in range(0, len(rows), FILE_CHUNK):
            self._file(rows[start : start + FILE_CHUNK], record)
        self.store.finish(key, self.store.sealed_jobs(key))
        api.discard(remote, record.upload or None)
        log.info(
            "batcher: batch %s ended (%s): %d answered, %d without an answer",
            key,
            remote.status,
            len(seen),
            len(ids) - len(seen),
        )

    def _file(self, rows: Sequence[tuple[str, LineOutcome, bytes]], record: BatchRecord) -> None:
        """File results into their jobs' lines, end the answered jobs (or send them back); a line
        whose job already ended (or went live) has its late answer settled here."""
        if not rows:
            return
        filed = self.store.file_results([(j, o.kind, raw) for j, o, raw in rows])
        back: list[str] = []
        answered: list[tuple[JobLine, LineOutcome]] = []
        for (job_id, outcome, _), found in zip(rows, filed, strict=True):
            line = found.line
            if line is None:
                continue  # its record expired: nobody waits for it
            if line.state == "live" or (found.ended and found.filed):
                self.lane.settle_late(line, outcome)
            elif line.state == "done" and not found.ended:
                if self._ender is not None and outcome.kind == "succeeded":
                    answered.append((line, outcome))
                else:
                    back.append(job_id)
        if answered and self._ender is not None:
            done, handed = self._ender.end(answered)
            back += handed
            if done and self._task_events is not None:
                # after the parking runs' own task-succeeded, which their worker sends within its
                # flush period of the run: Flower keeps the last one it receives
                succeeded = [
                    ("task-succeeded", {"uuid": e.job_id, "result": repr(e.status), "runtime": e.runtime_s})
                    for e in done
                ]
                self._held_events.append((record.created + self.events_delay_s, succeeded))
                self._send_due_events()
        self._send_back(back)

    def _send_due_events(self) -> None:
        """Send the held task events whose time came (all of them once the batcher stops)."""
        if not self._held_events or self._task_events is None:
            return
        now = self._clock()
        due = [e for at, group in self._held_events if at <= now or self._stop.is_set() for e in group]
        if not due:
            return
        self._held_events = [(at, g) for at, g in self._held_events if at > now and not self._stop.is_set()]
        try:
            self._task_events(due)
        except Exception:  # Flower's view only: the jobs are ended
            log.warning("batcher: the task events of %d ended line(s) were not sent", len(due), exc_info=True)

    def _all_live(self, record: BatchRecord) -> None:
        """Every line not answered yet runs live (the batch cannot be made, or failed)."""
        ids = self.store.sent_lines(record.key) or self.store.sealed_jobs(record.key)
        moved: list[str] = []
        for line in self.store.lines_of(ids):
            if line is not None and self.store.move(line.job_id, ("pending", "sent"), {"state": "live"}):
                self.lane.release(line)
                moved.append(line.job_id)
        self._send_back(moved)
        self.store.finish(record.key, self.store.sealed_jobs(record.key))

    def _send_back(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        for job_id, payload in zip(ids, self.store.payloads(ids), strict=True):
            if payload is None:
                log.warning("batcher: job %s has no payload left to send back", job_id)
                continue
            self._send(payload)


def job_sender(app: Celery, settings: Settings) -> Send:
    """Send a job's payload to its queue again, as its producer did (its class and tenant's place of
    the schedule; on RabbitMQ its class's queue), under its own id (Flower shows one task per job)."""
    queue = settings.queue
    amqp = is_amqp(settings.broker_url or settings.redis_url)

    def send(payload: dict[str, Any]) -> None:
        priority = str(payload.get("priority") or DEFAULT_PRIORITY)
        header = sched_header(
            priority,
            str(payload.get("tenant") or "default"),
            payload.get("concurrency_key"),
            payload.get("submitted_at"),
        )
        shown: dict[str, Any] = (
            {} if settings.monitor_content else {"argsrepr": monitor_repr(payload), "kwargsrepr": "{}"}
        )
        app.send_task(
            TASK_NAME,
            args=[payload],
            task_id=str(payload["id"]),
            queue=class_queue(queue, priority) if amqp else queue,
            headers={SCHED_HEADER: header},
            **shown,
        )

    return send


def started_events(payloads: list[dict[str, Any]], content: bool) -> list[TaskEvent]:
    """``task-received`` and ``task-started`` of jobs taken into the lane without a queue message
    (Flower then shows each as its task, under its id, as a worker's run of it would)."""
    out: list[TaskEvent] = []
    for payload in payloads:
        job_id = str(payload["id"])
        shown = repr((payload,)) if content else monitor_repr(payload)
        out.append(
            (
                "task-received",
                {"uuid": job_id, "name": TASK_NAME, "args": shown, "kwargs": "{}", "retries": 0, "root_id": job_id},
            )
        )
        out.append(("task-started", {"uuid": job_id}))
    return out


def task_event_sender(app: Celery, settings: Settings) -> Callable[[list[TaskEvent]], None] | None:
    """Sends Celery task events of the jobs the batcher takes and ends, in one message per call
    (Flower shows each job as one task, its id, as a run would; None when task events are off)."""
    if not settings.task_events:
        return None

    def send(events: list[TaskEvent]) -> None:
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, enabled=True, buffer_group=["task"], buffer_limit=1 << 30)
            try:
                for kind, fields in events:
                    dispatcher.send(kind, **fields)
                dispatcher.flush()
            finally:
                dispatcher.close()

    return send


def build_batcher(
    app: Celery, settings: Settings, resources: JobResources, *, clock: Callable[[], float] = time.time
) -> Batcher:
    """The batcher of a worker's ``resources``: its jobs sent with ``app``, its answered lines ended
    in bulk (``workers/jobs/batchend.py``)."""
    store = BatchStore(resources.redis)
    lane = BatchLane(
        store,
        resources.registry,
        resources.config.batch,
        resources.ledger,
        resources.prices,
        keep_s=settings.result_ttl_s,
        model_discounts=model_discounts(resources.config),
    )
    send = job_sender(app, settings)
    return Batcher(
        store,
        lane,
        send,
        clock=clock,
        ender=LineEnder(lane, resources),
        task_events=task_event_sender(app, settings),
        events_delay_s=settings.task_events_flush_ms / 1000 + 2.0,
        intake=LineIntake(lane, resources, send, clock=clock),
        monitor_content=settings.monitor_content,
    )


def start_batcher(app: Celery, settings: Settings, resources: JobResources) -> Batcher | None:
    """The worker's batcher, started (None when ``[batch] enabled`` or ``batcher`` is false)."""
    config = resources.config.batch
    if not (config.enabled and config.batcher):
        return None
    batcher = build_batcher(app, settings, resources)
    batcher.start()
    return batcher
