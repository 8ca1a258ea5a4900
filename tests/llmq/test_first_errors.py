"""A newcomer's first errors: Redis down, no worker, a queue set by ``LLMQ_QUEUE``.

Real subprocesses of the ``llmq`` command against a dead port and a real Redis; a real in-process
worker consuming a non-default queue.
"""

from __future__ import annotations

import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from llmq.localredis import ManagedRedis, free_port
from producers import Client
from simulator.app import SimulatorThread
from workers.settings import Settings


def _llmq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"LLMQ_REDIS_URL": "http://127.0.0.1:6379"}, ["LLMQ_REDIS_URL", "redis://", "got http://"]),
        ({"LLMQ_REDIS_URL": "127.0.0.1:6379"}, ["LLMQ_REDIS_URL", "redis://"]),
        ({"LLMQ_BROKER_URL": "ftp://h/"}, ["LLMQ_BROKER_URL", "amqp://", "got ftp://"]),
        (
            {"LLMQ_REDIS_URL": "sentinel://:hunter2@127.0.0.1:{port}/0"},
            ["cannot reach Redis", "sentinel://:***@127.0.0.1", "No master found for 'mymaster'"],
        ),
        (
            {"LLMQ_BROKER_URL": "amqp://guest:hunter2@127.0.0.1:{port}//"},
            ["cannot reach the job queue's broker", "amqp://guest:***@127.0.0.1", "LLMQ_BROKER_URL"],
        ),
    ],
    ids=["http-scheme", "no-scheme", "broker-scheme", "no-sentinel", "no-rabbitmq"],
)
def test_a_wrong_url_is_one_line_naming_the_setting(env: dict[str, str], says: list[str], redis_url: str) -> None:
    port = str(free_port())  # nothing listens there
    env = {"LLMQ_REDIS_URL": redis_url} | {k: v.replace("{port}", port) for k, v in env.items()}
    out = _llmq("submit", "hello", "--no-wait", env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr and "hunter2" not in out.stderr, out.stderr
    assert all(part in lines[0] for part in says), lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ("submit", "hello"),
        ("subscribe", "job-1"),
        ("budget", "show"),
        ("limits",),
        ("batch", "in.jsonl", "-o", "out.jsonl"),
    ],
    ids=lambda a: a[0],
)
def test_redis_unreachable_is_one_line_naming_the_url_and_the_fix(argv: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "prompt": "hi"}\n')
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    out = subprocess.run(
        [sys.executable, "-m", "llmq.cli", *argv],
        env={**os.environ, "LLMQ_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert url.replace("hunter2", "***") in lines[0] and "hunter2" not in out.stderr
    assert "LLMQ_REDIS_URL" in lines[0] and "start Redis" in lines[0]


def test_submit_without_a_worker_says_so_and_keeps_waiting(redis_url: str) -> None:
    out = _llmq(
        "submit",
        "hello",
        "--model",
        "openai:gpt-4o-mini",
        "--timeout",
        "4",
        env={"LLMQ_REDIS_URL": redis_url, "LLMQ_QUEUE": "nobody-home", "LLMQ_WORKER_CHECK_S": "0.5"},
    )
    assert out.returncode == 3, out.stderr  # waited out its own timeout
    lines = out.stderr.strip().splitlines()
    notes = [i for i, line in enumerate(lines) if "no worker consumes queue" in line and "still waiting" in line]
    assert len(notes) == 1 and "'nobody-home'" in lines[notes[0]] and "llmq worker" in lines[notes[0]]
    assert notes[0] < len(lines) - 1 and "Traceback" not in out.stderr  # said first, then the timeout


def test_submit_without_a_worker_names_the_job_it_queued_and_ctrl_c_says_where_it_went(redis_url: str) -> None:
    """The note and an interrupted wait name the job: without ``--id`` they are the only place its id
    shows, and the job stays queued (a worker started later runs it). Both used to say neither (a bare
    'interrupted')."""
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url, "LLMQ_QUEUE": "nobody-home", "LLMQ_WORKER_CHECK_S": "0.2"}
    argv = [sys.executable, "-m", "llmq.cli", "submit", "hello", "--model", "openai:gpt-4o-mini"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        note = proc.stderr.readline()  # the note, said while it waits
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    job_id = note.split("job ", 1)[1].split(" ", 1)[0] if note.startswith("llmq: job ") else ""
    assert job_id.startswith("job_") and " is queued, but no worker consumes queue 'nobody-home'" in note, note
    assert proc.returncode == 130 and rest.strip().splitlines() == [
        f"interrupted; job {job_id} is not cancelled (it runs): llmq subscribe {job_id}"
    ], rest
    with Client(redis_url, queue="nobody-home") as client:
        assert client.status(job_id) is not None  # still queued for a worker to come


@pytest.fixture
def worker_settings(redis_url: str) -> Settings:
    """The ``worker`` fixture's worker, consuming a queue other than the default."""
    return Settings(redis_url=redis_url, queue="elsewhere", pool="threads", concurrency=4, coalesce_ms=20.0)


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[None]:
    monkeypatch.setenv("LLMQ_QUEUE", "elsewhere")
    monkeypatch.setenv("LLMQ_REDIS_URL", redis_url)
    yield


def test_llmq_queue_takes_client_and_cli_jobs_to_the_worker_on_that_queue(
    elsewhere: None, worker: object, simulator: SimulatorThread, redis_url: str
) -> None:
    with Client() as client:  # no queue argument: LLMQ_QUEUE, as the worker reads it
        assert client.queue == "elsewhere"
        job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert client.submit(job).result(timeout=60).status == "succeeded"
    out = _llmq("submit", "hi", "--model", "openai:gpt-4o-mini", "--json", "--timeout", "60", env={})
    assert out.returncode == 0, out.stderr
    assert "no worker" not in out.stderr


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[str]:
    """A Redis of its own that requires a password (``hunter2``); its URL without one."""
    with ManagedRedis() as server:
        redis.Redis.from_url(server.url).config_set("requirepass", "hunter2")
        yield server.url


@pytest.fixture(scope="module")
def not_redis() -> Iterator[int]:
    """A port where something else listens: it answers any request with an HTTP error (as a web
    server, or RabbitMQ's protocol header, would); its port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _HTTPErrorHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port whose server takes connections and never says anything."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SilentHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class _SilentHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while self.request.recv(4096):
            pass


class _HTTPErrorHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while self.request.recv(4096):
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")


#: Each way a first start meets a Redis it cannot use, what the one line must say (``{port}``: the
#: Redis that requires a password; ``{other}``: a port where HTTP answers, not Redis).
REDIS_CASES = {
    "no-password": ("redis://127.0.0.1:{port}/0", ["Redis at redis://127.0.0.1:", "refused the login", "password"]),
    "wrong-password": ("redis://:wrong@127.0.0.1:{port}/0", ["redis://:***@127.0.0.1:", "refused the login"]),
    "no-such-db": ("{redis}/99", ["has no such database", "DB index is out of range", "LLMQ_REDIS_URL"]),
    "not-redis": ("redis://127.0.0.1:{other}/0", ["is not Redis", "host and port in LLMQ_REDIS_URL"]),
    # a real HTTP server waits for the end of a request's headers: redis-py's PING alone met silence
    # and, after its timeout, read as "cannot reach Redis ... start Redis"
    "http-server": ("redis://127.0.0.1:{http}/0", ["is not Redis but an HTTP server", "port in LLMQ_REDIS_URL"]),
    "silent": ("redis://127.0.0.1:{silent}/0", ["did not answer PING", "not a Redis that works", "LLMQ_REDIS_URL"]),
    # TLS asked of a plain Redis: the handshake waited, then "cannot reach Redis ... start Redis"
    "tls-to-plain": ("rediss://{host_port}/0", ["does not use TLS", "redis:// instead of rediss://", "LLMQ_REDIS_URL"]),
}
#: The commands an operator starts first: the producer, the worker and the gateway.
FIRST_COMMANDS = {
    "submit": ("submit", "hello", "--no-wait"),
    "worker": ("worker", "--concurrency", "2"),
    "gateway": ("gateway", "--allow-anonymous", "--port", "0"),
}


def _one_line(out: subprocess.CompletedProcess[str], says: list[str]) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert all(part in lines[0] for part in says), lines[0]
    assert "wrong" not in lines[0] and "hunter2" not in lines[0]  # no password shown


@pytest.mark.parametrize("command", FIRST_COMMANDS)
@pytest.mark.parametrize("case", REDIS_CASES)
def test_a_redis_it_cannot_use_is_one_line_naming_the_cause(
    case: str,
    command: str,
    locked_redis: str,
    redis_url: str,
    not_redis: int,
    simulator: SimulatorThread,
    silent_port: int,
) -> None:
    template, says = REDIS_CASES[case]
    port = locked_redis.rsplit(":", 1)[1].split("/")[0]
    http = urlsplit(simulator.url).port
    host_port = urlsplit(redis_url).netloc
    url = template.format(
        port=port,
        other=not_redis,
        redis=redis_url.rsplit("/", 1)[0],
        http=http,
        silent=silent_port,
        host_port=host_port,
    )
    out = _llmq(*FIRST_COMMANDS[command], env={"LLMQ_REDIS_URL": url, "LLMQ_REDIS_CONNECT_TIMEOUT_S": "1"})
    _one_line(out, says)
    assert "start Redis" not in out.stderr or case not in ("http-server", "silent", "tls-to-plain")


AMQP_CASES = {
    "refused": (lambda url: _with(url, port=free_port()), ["cannot reach the job queue's broker", "LLMQ_BROKER_URL"]),
    "wrong-password": (lambda url: _with(url, password="wrong"), ["refused the login", "LLMQ_BROKER_URL"]),
    "no-vhost": (
        lambda url: _with(url, vhost="llmq-no-such-vhost"),
        ["vhost llmq-no-such-vhost not found", "add_vhost"],
    ),
}


def _with(url: str, *, port: int | None = None, password: str | None = None, vhost: str | None = None) -> str:
    parts = urlsplit(url)
    user = parts.username or "guest"
    netloc = f"{user}:{password or parts.password or 'guest'}@{parts.hostname}:{port or parts.port or 5672}"
    return parts._replace(netloc=netloc, path=f"/{vhost}" if vhost else parts.path).geturl()


@pytest.mark.parametrize("command", FIRST_COMMANDS)
@pytest.mark.parametrize("case", AMQP_CASES)
def test_a_rabbitmq_it_cannot_use_is_one_line_at_once(
    case: str, command: str, amqp_server_url: str, redis_url: str
) -> None:
    """Before: the worker retried a broker that refused connections for minutes (Celery's start-up
    retries), and a refused login or a missing vhost was a traceback from every command."""
    make, says = AMQP_CASES[case]
    out = _llmq(*FIRST_COMMANDS[command], env={"LLMQ_REDIS_URL": redis_url, "LLMQ_BROKER_URL": make(amqp_server_url)})
    _one_line(out, says)


@pytest.mark.parametrize("command", FIRST_COMMANDS)
def test_a_queue_redis_of_its_own_is_checked_like_the_main_one(command: str, redis_url: str) -> None:
    """``LLMQ_BROKER_URL`` may name a Redis apart from ``LLMQ_REDIS_URL``: before, a worker retried it for
    minutes and a gateway served without it."""
    broker = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    out = _llmq(*FIRST_COMMANDS[command], env={"LLMQ_REDIS_URL": redis_url, "LLMQ_BROKER_URL": broker})
    _one_line(out, [broker.replace("hunter2", "***"), "LLMQ_BROKER_URL"])


def test_a_model_typo_is_refused_by_submit_and_batch_before_anything_runs(
    worker: object, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {"LLMQ_REDIS_URL": redis_url, "LLMQ_QUEUE": "elsewhere"}  # (this module's worker consumes "elsewhere")
    out = _llmq("submit", "hello", "--model", "gtp-4o-mini", "--no-wait", env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'gtp-4o-mini'" in lines[0] and "did you mean 'gpt-4o-mini'?" in lines[0]

    source = tmp_path / "in.jsonl"
    body = {"model": "gpt-4o-mni", "messages": [{"role": "user", "content": "hi"}]}
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {**body, "model": "gpt-4o"}}
    bad = {
        "custom_id": "b",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {**body, "model": "opneai:gpt-4o"},
    }
    source.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    batch = _llmq("batch", str(source), "-o", str(tmp_path / "out.jsonl"), env=env)
    assert batch.returncode == 2, batch.stderr
    assert (
        "line 2, model: unknown provider 'opneai'" in batch.stderr and "did you mean 'openai:gpt-4o'?" in batch.stderr
    )
    assert not list(redis_client.scan_iter(match="llmq:job:*"))  # nothing enqueued by either


@pytest.mark.parametrize(
    ("variable", "command", "option"),
    [("LLMQ_CONCURRENCY", "worker", "--concurrency"), ("LLMQ_BATCH_WINDOW", "batch", "--window")],
)
def test_a_bad_number_in_the_environment_is_that_commands_usage_error(
    variable: str, command: str, option: str, redis_url: str
) -> None:
    """Read as the option's default: the command that uses it refuses with its usage error (exit 2),
    every other command works (it used to be a traceback of the whole parser, whatever the command)."""
    env = {"LLMQ_REDIS_URL": redis_url, variable: "abc"}
    out = _llmq(command, *(["in.jsonl", "-o", "out.jsonl"] if command == "batch" else []), env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{option}" in out.stderr and "invalid int value: 'abc'" in out.stderr
    assert _llmq("submit", "--help", env=env).returncode == 0


def test_subscribe_to_a_job_no_worker_takes_says_so_once_and_keeps_waiting(redis_url: str) -> None:
    with Client(redis_url, queue="nobody-home") as client:
        job_id = client.submit({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}).id
    env = {"LLMQ_REDIS_URL": redis_url, "LLMQ_WORKER_CHECK_S": "0.5"}  # LLMQ_QUEUE unset: not the job's
    out = _llmq("subscribe", job_id, "--timeout", "4", env=env)
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    notes = [
        i
        for i, line in enumerate(lines)
        if "no worker consumes queue 'nobody-home'" in line and "still waiting" in line
    ]
    assert len(notes) == 1 and notes[0] < len(lines) - 1 and "Traceback" not in out.stderr, out.stderr
    queued = _llmq("submit", "x", "--no-wait", env={**env, "LLMQ_QUEUE": "nobody-home"})
    assert queued.returncode == 0 and queued.stdout.startswith("job_")
    assert "queued, but no worker consumes queue 'nobody-home'" in queued.stderr


@pytest.mark.parametrize("command", [["spend"], ["budget", "show"], ["limits"], ["cache", "stats"]])
def test_a_redis_error_after_the_ping_names_redis_without_its_password(
    redis_url: str, redis_client: redis.Redis, command: list[str]
) -> None:
    """A Redis that answers PING but refuses the command (an ACL here; a full Redis alike) is one line
    from the CLI's handler, the URL shown without its password (these commands printed the raw
    LLMQ_REDIS_URL, password and all, and called the Redis 'not reachable')."""
    user, secret = "c27-ping-only", "pw-7f3a9c0e1d"
    redis_client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{secret}", "~*", "&*", "+ping", "+hello")
    try:
        parts = urlsplit(redis_url)
        url = f"redis://{user}:{secret}@{parts.hostname}:{parts.port}{parts.path}"
        proc = _llmq(*command, env={**os.environ, "LLMQ_REDIS_URL": url})
    finally:
        redis_client.execute_command("ACL", "DELUSER", user)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert secret not in proc.stderr and secret not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the command" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
