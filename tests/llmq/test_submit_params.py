"""``llmq submit`` with request-parameter flags, as a subprocess, through a real worker and the simulator."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from simulator.app import SimulatorThread

REPO = Path(__file__).resolve().parents[2]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def submit(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    environ["LLMQ_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "submit", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_schema_and_the_other_flags(worker, simulator: SimulatorThread, redis_url: str, tmp_path: Path) -> None:
    schema = tmp_path / "place.json"
    schema.write_text(json.dumps(SCHEMA))
    image = tmp_path / "dot.png"
    image.write_bytes(
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 4, 4) + b"\x08\x02\0\0\0"
    )
    proc = submit(
        redis_url,
        "Where?",
        "--model", "openai:gpt-4o-mini~badjson",
        "--json-schema", str(schema),
        "--stop", "never-there",
        "--top-p", "0.5",
        "--seed", "4",
        "--user", "cli-user",
        "--image", str(image),
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded" and result["repairs"] == 1
    assert set(result["parsed"]) == {"city"}


def test_a_provider_that_cannot_is_refused_before_submit(redis_url: str) -> None:
    proc = submit(redis_url, "hi", "--model", "anthropic:claude-sonnet-4-5", "--seed", "1", "--no-wait")
    assert proc.returncode == 2
    assert "anthropic does not support seed" in proc.stderr


def test_any_request_parameter_by_its_field_name(worker, simulator: SimulatorThread, redis_url: str) -> None:
    """``--param NAME=VALUE``: every contract parameter without a flag of its own (JSON values)."""
    proc = submit(
        redis_url,
        "hi",
        "--model", "openai:gpt-4o-mini",
        "--param", "n=2",
        "--param", "logprobs=true",
        "--param", "top_logprobs=1",
        "--param", "presence_penalty=0.5",
        "--param", 'logit_bias={"50256": -100}',
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded" and [a["index"] for a in result["alternatives"]] == [1]
    assert "".join(t["token"] for t in result["logprobs"]) == result["content"]


def test_a_param_that_is_not_one_or_that_the_provider_lacks_is_refused(redis_url: str) -> None:
    typo = submit(redis_url, "hi", "--model", "openai:gpt-4o-mini", "--param", "presence_penlty=1", "--no-wait")
    assert typo.returncode == 2 and "did you mean 'presence_penalty'" in typo.stderr
    lacking = submit(redis_url, "hi", "--model", "anthropic:claude-sonnet-4-5", "--param", "n=2", "--no-wait")
    assert lacking.returncode == 2 and "anthropic does not support n" in lacking.stderr


def test_image_flag_reads_a_file_as_a_data_url(tmp_path: Path) -> None:
    from llmq.commands.params import image_part

    path = tmp_path / "a.png"
    path.write_bytes(b"abc")
    assert image_part(str(path))["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(b"abc").decode()
    assert image_part("https://x/y.png")["image_url"]["url"] == "https://x/y.png"


def test_submit_uses_a_published_prompt_by_label_with_typed_variables(
    worker, simulator: SimulatorThread, redis_url: str, tmp_path: Path
) -> None:
    import httpx2
    import yaml

    body = {
        "name": "greet",
        "version": 1,
        "description": "Say hello",
        "input": {"type": "object", "properties": {"who": {"type": "string"}, "times": {"type": "integer"}}},
        "messages": [{"role": "user", "content": "Greet {{ who }} {{ times }} times."}],
        "defaults": {"model": "openai:gpt-4o-mini"},
        "cases": {"ada": {"who": "Ada", "times": 2}},
    }
    lib = tmp_path / "lib"
    for version in (1, 2):
        path = lib / "greet" / f"v{version}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = body["messages"][0]["content"] if version == 1 else "Say hi to {{ who }}, {{ times }}x."
        path.write_text(yaml.safe_dump(body | {"version": version, "messages": [{"role": "user", "content": text}]}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")} | {"LLMQ_REDIS_URL": redis_url}
    for argv in (["prompts", "push", str(lib)], ["prompts", "label", "greet", "production=2"]):
        done = subprocess.run([sys.executable, "-m", "llmq.cli", *argv], cwd=REPO, env=environ, capture_output=True)
        assert done.returncode == 0, done.stderr

    # "007" stays a string (the schema says so); "3" becomes the integer the schema asks for
    proc = submit(redis_url, "--use", "greet@production", "--var", "who=007", "--var", "times=3", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded" and result["prompt"]["version"] == 2
    [sent] = httpx2.get(f"{simulator.url}/_sim/requests", params={"job": result["id"]}).json()
    assert "Say hi to 007, 3x." in sent["prompt"]

    # a pinned version, and the refusals: a missing variable, text and --use together, --var alone
    pinned = json.loads(submit(redis_url, "--use", "greet@1", "--var", "who=Ada", "--var", "times=2", "--json").stdout)
    assert pinned["prompt"]["version"] == 1
    for argv, says in [
        (["--use", "greet@production", "--var", "who=Ada", "--var", "times=x"], "times"),
        (["hello", "--use", "greet"], "--use"),
        (["hello", "--var", "who=Ada"], "--var"),
        (["--use", "nope@production"], "nope"),
    ]:
        refused = submit(redis_url, *argv)
        assert refused.returncode == 2 and says in refused.stderr, (argv, refused.stderr)
        assert "Traceback" not in refused.stderr
