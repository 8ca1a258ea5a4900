"""Run a prompt file through the queue: ``llmq batch IN.jsonl -o OUT.jsonl`` and :func:`run_batch`.

Two streaming passes over the input, so memory does not grow with the file:

1. **Validate** every line (format, fields, duplicate ``custom_id`` s) before anything is
   enqueued. Errors name the line and the field. Invalid lines abort the run, or with
   ``skip_invalid`` go to the errors file.
2. **Run**: submit valid lines with at most ``window`` jobs in flight; every job's worker pushes
   its result to one reply list for the whole batch, which this process BLPOPs; each finished
   line is appended to the output (or errors) file as one complete write.

Resuming is safe because a job id is derived from the batch and the ``custom_id``: a rerun skips
every ``custom_id`` already in the output files, and a line that was in flight when the last run
died is not sent again (the client enqueues an id once): its result is read from the job store,
or arrives on the same reply list. A result that arrives twice (a job re-run after a worker
restart notifies again) is written once, because only ids in flight are accepted.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from producers.batch.files import BatchFileError
from producers.batch.progress import BatchProgress
from producers.batch.runner import BatchRunner, BatchSummary, Via, batch_id_for, default_errors_path, job_id_for
from producers.batch.validate import BatchValidationError, ValidationReport, validate_file
from producers.client import Client

__all__ = [
    "BatchFileError",
    "BatchProgress",
    "BatchSummary",
    "BatchValidationError",
    "ValidationReport",
    "batch_id_for",
    "default_errors_path",
    "job_id_for",
    "run_batch",
    "validate_file",
]

_BATCH_ID = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def run_batch(
    input_path: str | Path,
    output_path: str | Path,
    *,
    errors_path: str | Path | None = None,
    model: str | None = None,
    window: int = 256,
    skip_invalid: bool = False,
    batch_id: str | None = None,
    tenant: str | None = None,
    priority: str = "bulk",
    client: Client | None = None,
    redis_url: str | None = None,
    progress: BatchProgress | None = None,
    stall_timeout_s: float | None = None,
    handle_signals: bool = True,
    via: Via = "queue",
    deadline_s: float | None = None,
) -> BatchSummary:
    """Run every line of ``input_path``; see the module docstring. Raises
    :class:`BatchValidationError` (nothing enqueued) or :class:`BatchFileError`."""
    if window < 1:
        raise ValueError("window must be >= 1")
    if batch_id is not None and not _BATCH_ID.match(batch_id):
        raise ValueError("batch id must be 1-40 letters, digits, '_', '.' or '-'")
    errors = Path(errors_path) if errors_path else default_errors_path(output_path)
    if Path(errors).resolve() == Path(output_path).resolve():
        raise ValueError("the errors file must differ from the output file")
    bid = batch_id or batch_id_for(input_path, output_path)
    own_client = client is None
    client = client or Client(redis_url)
    runner = BatchRunner(client, bid, Path(output_path), errors, window, progress or BatchProgress(enabled=False))
    try:
        with _graceful_stop(runner) if handle_signals else contextlib.nullcontext():
            return runner.run(
                Path(input_path), model, skip_invalid, tenant, stall_timeout_s, priority, via=via, deadline_s=deadline_s
            )
    finally:
        if own_client:
            client.close()


@contextlib.contextmanager
def _graceful_stop(runner: BatchRunner) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: stop submitting, write what is done, exit. Second Ctrl-C: abort."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if not runner.submitting or (runner.stop_requested and signum == signal.SIGINT):
            raise KeyboardInterrupt  # still validating (nothing enqueued yet), or asked twice
        runner.stop_requested = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
