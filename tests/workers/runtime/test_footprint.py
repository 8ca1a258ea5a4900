"""What a worker process holds in memory: the encodings its models need, not Celery's whole command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmq.devstack import LocalStack
from producers import Client
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from workers.accounting.bpefiles import PRELOAD_ENV
from workers.accounting.compactbpe import compact_bpe, preload_compacted
from workers.accounting.prices import PriceBook
from workers.accounting.tokens import TokenCounter
from workers.runtime.launch import default_encodings
from workers.runtime.resources import WorkerResources
from workers.settings import Settings


def test_a_worker_preloads_only_its_default_models_encoding(redis_url: str) -> None:
    """``openai:gpt-4o-mini`` (the default model) counts with o200k_base; cl100k_base (Anthropic's and
    the others' estimates, ~24 MB) loads on the first job that needs it, not at start."""
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=2, default_model="openai:gpt-4o-mini")
    resources = WorkerResources.build(settings, watch_cancels=False, provider_env={"OPENAI_API_KEY": "sk-x"})
    try:
        assert resources.counter.loaded == ("o200k_base",)
        assert resources.counter.compact
    finally:
        resources.close()


def test_the_worker_command_imports_celerys_worker_command_alone() -> None:
    """``llmq worker`` runs Celery's ``worker`` command without Celery's other commands and plugins
    (Flower and Tornado, prompt_toolkit by ``celery amqp``: ~12 MB of every worker process)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "workers.runtime.launch", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage: llmq worker [OPTIONS]" in proc.stdout and "--concurrency" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "celery.bin.worker" in imported and "workers.runtime.app" in imported
    assert not {m for m in imported if m.split(".")[0] in ("flower", "tornado", "prompt_toolkit", "click_repl")}
    assert "celery.bin.celery" not in imported


def launch_imports(env: dict[str, str]) -> list[str]:
    """The modules ``python -m workers.runtime.launch --help`` imports, in the order they finished."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "workers.runtime.launch", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]


def test_the_worker_loads_the_encodings_llmq_worker_names_before_celery_and_pydantic() -> None:
    """The first process on a host builds an encoding's compact table from the bundled file, holding
    ~45 MB for a moment: the worker loads its encodings first, after gevent's patches and before
    Celery's command, the app and pydantic are imported, so that moment is not on top of them."""
    imported = launch_imports({PRELOAD_ENV: "o200k_base"})
    loaded = imported.index("regex")  # imported when the first encoding loads (its pattern)
    assert "pydantic" not in imported[:loaded]
    assert "celery.bin.worker" in imported[loaded:] and "workers.runtime.app" in imported[loaded:]
    assert not {name for name in imported if name.startswith("tiktoken")}  # tiktoken's tokenizer: never
    # unset (celery -A workers.runtime.app worker, tests): nothing loads early
    assert "regex" not in launch_imports({PRELOAD_ENV: ""})


def test_llmq_worker_names_the_default_models_encodings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``llmq worker`` tells the worker to load first: the default model's encodings, as the
    resources would preload them (a route's whole chain); nothing for a config the worker will refuse."""
    monkeypatch.delenv("LLMQ_CONFIG", raising=False)
    monkeypatch.setenv("LLMQ_DEFAULT_MODEL", "openai:gpt-4o-mini")
    assert default_encodings() == ["o200k_base"]
    config = tmp_path / "llmq.toml"
    config.write_text('[routes]\nsmart = ["openai:gpt-4", "anthropic:claude-sonnet-4-5"]\n')
    monkeypatch.setenv("LLMQ_CONFIG", str(config))
    monkeypatch.setenv("LLMQ_DEFAULT_MODEL", "smart")
    assert default_encodings() == ["cl100k_base"]
    config.write_text("[routes\n")  # not TOML: the worker's start says so, not this
    assert default_encodings() == []


def test_a_compacting_counter_counts_with_the_encoding_loaded_first() -> None:
    """The worker's counter finds what :func:`preload_compacted` loaded (one instance per process): a
    bundled encoding's :class:`CompactBPE` (any other would be tiktoken's, compacted)."""
    assert preload_compacted(["o200k_base", "no_such_encoding"]) == ["o200k_base"]
    counter = TokenCounter(compact=True)
    assert counter.lengths("o200k_base") is compact_bpe("o200k_base")


WORKER_COUNTS = """
import gc, sys
from workers.accounting.compactbpe import preload_compacted
preload_compacted(["o200k_base"])  # what launch.py does for the default model
from workers.accounting.context_window import fit_messages
from workers.accounting.tokens import TokenCounter, estimate_usage
from workers.contract import FunctionCall, Message, Tool, ToolCall
counter = TokenCounter(compact=True)  # the worker's (workers/runtime/resources.py)
call = ToolCall(id="c1", function=FunctionCall(name="lookup", arguments='{"q": "東京"}'))
messages = [
    Message(role="system", content="You are terse."),
    Message(role="user", content="naïve café 東京 🎉 " * 50, name="ops"),
    Message(role="assistant", tool_calls=[call]),
    Message(role="tool", tool_call_id="c1", content='{"temp": 21}'),
]
tool = Tool.model_validate({"type": "function", "function": {"name": "lookup", "description": "Look up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "What.", "enum": ["a"]},
    "n": {"type": "integer", "minimum": 1}}}}})
for model in ("openai:gpt-4o-mini", "openai:gpt-4", "anthropic:claude-sonnet-4-5"):
    prompt = counter.count(model, messages, [tool])
    assert counter.breakdown(model, messages, [tool]).total() == prompt.tokens
    fit_messages(model, messages, counter=counter, max_tokens=10, window=prompt.tokens, truncate="sliding_window")
    counter.count_text(model, "thinking " * 100)
    estimate_usage(prompt, "an answer", model, [call], counter=counter)
import tiktoken, tiktoken.registry
print(sorted(tiktoken.registry.ENCODINGS), sum(isinstance(o, tiktoken.Encoding) for o in gc.get_objects()))
print(sorted(type(lengths).__name__ for lengths in counter._lengths.values()), counter.loaded)
print("tiktoken_ext.openai_public" in sys.modules, "tiktoken.load" in sys.modules)
"""


def test_the_worker_counts_every_way_without_building_tiktokens_tokenizer() -> None:
    """Counts, per-message breakdowns, the sliding window, tool definitions and calls, thinking text
    and completion estimates, for OpenAI models and estimates: the worker's counter never builds a
    ``tiktoken.Encoding`` (its Rust tokenizer is ~43 MB for o200k_base), nor loads tiktoken's files."""
    proc = subprocess.run([sys.executable, "-c", WORKER_COUNTS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == [
        "[] 0",
        "['CompactBPE', 'CompactBPE'] ('o200k_base', 'cl100k_base')",
        "False False",
    ]


BEDROCK_WITHOUT_BOTOCORE = """
import sys
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.registry import build_registry
from workers.contract.providers import ProviderSpec
http = HTTPClient(HTTPSettings(max_connections=2))
env = {"AWS_ACCESS_KEY_ID": "AKIDLLMQTEST0000000", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}
registry = build_registry(http, env, {"bedrock": ProviderSpec(type="bedrock", region="us-east-1")})
print(sorted(m for m in sys.modules if m.split(".")[0] == "botocore"))
provider = registry.get("bedrock")
headers = provider.sign("https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse", {}, b"{}")
print("AKIDLLMQTEST0000000" in {k.lower(): v for k, v in headers.items()}.get("authorization", ""))
"""


def test_a_configured_bedrock_provider_imports_botocore_on_its_first_call() -> None:
    """botocore (~7 MB, ~130 modules) loads when a Bedrock call is first signed, not when the provider
    is built at the worker's start: a worker whose jobs never go to Bedrock does not hold it."""
    proc = subprocess.run([sys.executable, "-c", BEDROCK_WITHOUT_BOTOCORE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["[]", "True"]


PLAIN_START = """
import sys
from workers.runtime.launch import without_optional
with without_optional():
    import httpcore2, redis, celery.bin.worker, celery.apps.worker
    import workers.runtime.app
from workers.contract import CompletionJob, Message
from workers.jobs.pipeline import JobRunner
from workers.prompts.render import render_job
from workers.runtime.resources import WorkerResources
from workers.settings import Settings
settings = Settings(redis_url=sys.argv[1], pool="threads", concurrency=2)
resources = WorkerResources.build(settings, watch_cancels=False, provider_env={"OPENAI_API_KEY": "sk-x"})
JobRunner(resources)
job = CompletionJob(model="openai:gpt-4o-mini", messages=[Message(role="user", content="hi")])
assert render_job(job, resources.redis).messages == job.messages
resources.close()
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
print(" ".join(sorted(name for name in sys.modules if name.startswith("opentelemetry"))), file=sys.stderr)
"""


def test_a_plain_worker_start_and_job_import_no_prompt_schema_or_trio_modules(redis_url: str) -> None:
    """A worker without tools whose jobs bring their messages and ask for no JSON schema does not load
    Jinja2 (the prompt sandbox), jsonschema (prompt variables, tools, structured output) or trio
    (httpcore2 imports it when installed, for async clients under trio): ~9 MB together; without
    OTEL_* variables, not the OpenTelemetry SDK either (redis-py imports its metrics part if let); nor
    what Celery and kombu import if installed for what the worker does not do (pygments, PyYAML, psutil)."""
    proc = subprocess.run([sys.executable, "-c", PLAIN_START, redis_url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(proc.stdout.split())
    assert "workers" in loaded and "httpcore2" in loaded
    assert not loaded & {"jinja2", "jsonschema", "trio", "botocore", "pygments", "yaml", "psutil"}
    # neither the OpenTelemetry SDK (no OTEL_* variables: tracing is off) nor redis-py's use of it
    sdk = [name for name in proc.stderr.split() if name.startswith("opentelemetry.sdk")]
    assert sdk == []


def test_llmq_worker_and_a_plain_job_import_neither_genai_prices_nor_tiktokens_encodings(
    redis_url: str, simulator: SimulatorThread, tmp_path: Path
) -> None:
    """``llmq worker`` asks genai-prices what the worker's start and its default model's jobs need
    before its exec and hands the answers over (``workers/accounting/pricehandover.py``): the worker
    process (gevent, the bench's simulated providers) starts and runs a job of the default model
    without importing genai-prices' data and models (~7 MB), and charges the price it gives. It
    counts the prompt with its compact counter, never loading a tiktoken encoding (~43 MB)."""
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url, "LLMQ_DEFAULT_MODEL": "openai:gpt-4o-mini"}
    stack = LocalStack(log_dir=str(tmp_path), env=env)
    stack.simulator_url = simulator.url  # the worker's providers (and the simulated config) point at it
    try:
        stack.start_redis()
        stack.start_worker(
            pool="gevent", concurrency=4, name="worker-prices", extra_env={"PYTHONPROFILEIMPORTTIME": "1"}
        )
        stack.wait_for_workers(1, timeout=90)
        with Client(settings=ProducerSettings(redis_url=redis_url)) as client:
            result = client.submit(
                {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            ).result(timeout=60)
    finally:
        stack.stop()
    assert result.status == "succeeded", result.error
    expected = PriceBook().lookup("openai:gpt-4o-mini").cost(result.usage)
    assert expected is not None and result.cost_usd == pytest.approx(float(expected), abs=1e-9)
    log = (stack.log_dir / "worker-prices.log").read_text()
    names = [line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if line.startswith("import time:")]
    exec_at = len(names) - names[::-1].index("site")  # each process imports site first: llmq worker's, then its exec's
    launcher, worker = set(names[:exec_at]), set(names[exec_at:])
    assert "workers.runtime.app" in worker and "workers.accounting.prices" in worker
    assert not {name for name in worker if name.split(".")[0] == "genai_prices"}
    # it counted the job's prompt with its compact counter: no tiktoken encoding was ever loaded
    assert "workers.accounting.compactbpe" in worker and not {"tiktoken.load", "tiktoken_ext.openai_public"} & worker
    assert "genai_prices" in launcher and "celery.bin.worker" not in launcher  # it asked, before its exec


LAUNCHED_GEVENT = """
import sys
from workers.runtime import launch
try:
    launch.main(["-P", "gevent", "--help"])  # the worker's start up to its command line, then exits
except SystemExit:
    pass
import gevent, gevent.hub
print(gevent.config.track_greenlet_tree, gevent.spawn(lambda: None).spawning_greenlet is None)
print(gevent.hub.get_hub().__class__.__name__, gevent.hub.spawn_raw(lambda: None).__class__.__name__)
"""


@pytest.mark.parametrize(("env", "tracked"), [({}, False), ({"GEVENT_TRACK_GREENLET_TREE": "true"}, True)])
def test_a_launched_gevent_worker_does_not_track_the_greenlet_tree(env: dict[str, str], tracked: bool) -> None:
    """Each greenlet would keep the greenlet that spawned it, spawn-tree locals and a copy of its
    spawning stack, for debugging the worker never does; an operator who wants it still gets it."""
    environ = {k: v for k, v in os.environ.items() if k != "GEVENT_TRACK_GREENLET_TREE"}
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHED_GEVENT], capture_output=True, text=True, timeout=120, env={**environ, **env}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("\n")
    assert lines[-3] == f"{tracked} {not tracked}"
    assert lines[-2].split()[1] == ("TrackedRawGreenlet" if tracked else "greenlet")
