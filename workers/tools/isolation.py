"""Where a tool call runs, so that its timeout can stop it: the pool's own, an OS thread, a process.

A call's timeout (and a cancel) sets the call's :class:`~workers.tools.registry.CancelToken`; the
job then goes on with an error result. Whether the handler itself stops depends on where it runs:

* ``isolation=None`` (default), the pool's own: under ``-P threads`` an OS thread; under ``-P gevent``
  a greenlet. A greenlet that never yields (a CPU-bound loop, C code that blocks without gevent)
  holds the whole worker process, every job in it, until it returns: its timeout cannot even fire.
* ``"thread"``: an OS thread under either pool (under gevent from a thread pool of this module's, not
  the hub's, which resolves DNS). The timeout frees the job and the worker stays responsive (the
  thread shares the GIL); the handler runs on to its end unless it checks its token.
* ``"process"``: a child process per call (a fresh interpreter that imports the tool's module),
  killed at the timeout or cancel: the one isolation that stops a handler that ignores its token.
  It costs a process start per call (an interpreter and the tool module's imports), and the
  arguments and the result travel pickled; the handler gets a token that is never set (the process
  is killed instead).
"""

from __future__ import annotations

import importlib
import logging
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from workers.tools.registry import REGISTRY, CancelToken, ToolSpec

__all__ = ["ToolProcessError", "child_main", "run_in_os_thread", "run_in_process", "run_in_thread"]

log = logging.getLogger("llmq.tools")

#: OS threads for ``isolation="thread"`` calls under gevent (a call past its timeout keeps its thread
#: until it returns).
GEVENT_THREADS = 64

#: ``(value, error)``: how a call's outcome is handed back; called once, where events may be set (a
#: plain thread under ``-P threads``, the hub or a greenlet under gevent).
Done = Callable[[Any, BaseException | None], None]


class ToolProcessError(RuntimeError):
    """The process running a call ended without an answer (killed at the timeout, or it crashed)."""


def _gevent_patched() -> bool:
    """True in a gevent worker (``threading`` monkey-patched: a ``Thread`` is a greenlet)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


_pool: Any = None
_pool_lock = threading.Lock()


def _gevent_pool() -> Any:
    global _pool
    with _pool_lock:
        if _pool is None:
            from gevent.threadpool import ThreadPool

            _pool = ThreadPool(GEVENT_THREADS)
        return _pool


def run_in_thread(call: Callable[[], Any], done: Done, name: str = "llmq-tool") -> None:
    """Run ``call`` on a ``threading.Thread`` (the pool's own: a greenlet under gevent); ``done(value,
    error)`` once it returns or raises."""

    def run() -> None:
        try:
            value = call()
        except BaseException as exc:  # a handler's failure is a tool result, never a dead job
            done(None, exc)
        else:
            done(value, None)

    threading.Thread(target=run, name=name, daemon=True).start()


def run_in_os_thread(call: Callable[[], Any], done: Done, name: str = "llmq-tool") -> None:
    """Run ``call`` on an OS thread, under gevent too; ``done(value, error)`` once it returns or raises."""
    if not _gevent_patched():
        run_in_thread(call, done, name)
        return
    # gevent's thread pool reports the outcome in the hub (rawlink), where gevent's events may be set;
    # a real thread must never set them itself
    result = _gevent_pool().spawn(call)
    result.rawlink(lambda r: done(r.value, None) if r.successful() else done(None, r.exception))


def run_in_process(spec: ToolSpec, kwargs: dict[str, Any], token: CancelToken, done: Done) -> None:
    """Run ``spec``'s handler with ``kwargs`` in a child process, killed when ``token`` is set.

    The child is a fresh interpreter (``python -c``, not multiprocessing's ``spawn``, which re-runs the
    parent's ``__main__``) that gets ``(sys.path, module, tool name, arguments)`` pickled on its stdin
    and answers ``(ok, value or error)`` pickled on its stdout; what the handler prints goes to the
    worker's stderr. Under gevent the wait is cooperative (gevent's ``subprocess``)."""
    module = getattr(spec.handler, "__module__", None) or ""
    payload = pickle.dumps((list(sys.path), module, spec.name, kwargs))
    process = subprocess.Popen(
        [sys.executable, "-c", "from workers.tools.isolation import child_main; child_main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )

    def kill() -> None:
        if process.poll() is None:
            process.kill()

    token.on_cancel(kill)

    def watch() -> None:  # a greenlet under gevent (its wait is cooperative), else a thread
        value: Any = None
        error: BaseException | None = None
        try:
            out, _ = process.communicate(payload)
        except OSError:  # the child died before it read its arguments (killed at once)
            out = b""
            process.wait()
        try:
            ok, value = pickle.loads(out) if process.returncode == 0 and out else (False, None)
        except Exception:  # a torn answer
            ok, value = False, None
        if not ok:
            error = value if isinstance(value, BaseException) else None
            value = None
        if error is None and not ok:
            why = f"was killed ({token.reason})" if token.cancelled else f"exited with {process.returncode}"
            error = ToolProcessError(f"the process running the tool {why} before it answered")
        done(value, error)

    threading.Thread(target=watch, name=f"llmq-tool-watch-{spec.name}", daemon=True).start()


def child_main() -> None:
    """The child process (``run_in_process``): import the tool's module (which registers it), run
    it, answer on stdout (the handler's own prints go to stderr)."""
    answer = sys.stdout.buffer
    sys.stdout = sys.stderr
    path, module, name, kwargs = pickle.loads(sys.stdin.buffer.read())
    sys.path[:] = path
    try:
        importlib.import_module(module)
        spec = REGISTRY.get(name)
        if spec is None:
            raise ToolProcessError(
                f"tool {name!r} is not registered by importing {module!r} (isolation='process' runs tools "
                "registered when their module is imported)"
            )
        if spec.cancel_param:
            kwargs = {**kwargs, spec.cancel_param: CancelToken()}  # never set: the parent kills instead
        outcome: tuple[bool, Any] = (True, spec.handler(**kwargs))
    except BaseException as exc:  # sent back as the call's error
        outcome = (False, exc)
    try:
        data = pickle.dumps(outcome)
    except Exception as exc:  # the value or the error does not pickle: send what can be said of it
        ok, what = outcome
        text = repr(what) if ok else f"{type(what).__name__}: {what}"
        data = pickle.dumps((ok, text) if ok else (False, ToolProcessError(f"{text} (not picklable: {exc})")))
    answer.write(data)
    answer.flush()
