"""``llmq prompts``: test (golden files), push, label, list, show, render."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from llmq.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "prompts"

BODY = {
    "name": "greet",
    "version": 1,
    "description": "Say hello",
    "input": {"type": "object", "properties": {"who": {"type": "string"}, "times": {"type": "integer"}}},
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Greet {{ who }} {{ times }} times."},
    ],
    "cases": {"ada": {"who": "Ada", "times": 2}, "bob": {"who": "Bob", "times": 1}},
}


def write(root: Path, version: int = 1, **changes: object) -> Path:
    body = copy.deepcopy(BODY) | {"version": version} | changes
    path = root / "greet" / f"v{version}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def llmq(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["prompts", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", redis_url)
    monkeypatch.setenv("LLMQ_PROMPTS_DIR", str(tmp_path / "lib"))


def test_the_shipped_example_prompts_match_their_golden_files() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "prompts", "test", str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout and int(done.stdout.split(" passed")[0].split()[-1]) >= 6


def test_golden_files_catch_a_changed_template_and_update_fixes_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    write(lib)
    code, out, _ = llmq(capsys, "test")
    assert code == 1 and "no golden file" in out and "0 passed, 2 failed" in out
    code, out, _ = llmq(capsys, "test", "--update")
    assert code == 0 and "2 updated" in out
    golden = json.loads((lib / "greet" / "golden" / "v1.ada.json").read_text())
    assert golden["messages"][1] == {"role": "user", "content": "Greet Ada 2 times."}
    assert llmq(capsys, "test")[0] == 0

    write(
        lib,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Wave at {{ who }} {{ times }}x."},
        ],
    )
    code, out, _ = llmq(capsys, "test")
    assert code == 1
    assert "FAIL greet v1 case 'ada': rendered messages differ" in out
    assert '-      "content": "Greet Ada 2 times."' in out and '+      "content": "Wave at Ada 2x."' in out
    assert llmq(capsys, "test", "--update")[0] == 0
    assert llmq(capsys, "test")[0] == 0


def test_a_removed_or_renamed_case_is_reported_not_ignored(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib)
    llmq(capsys, "test", "--update")
    write(lib, cases={"ada": {"who": "Ada", "times": 2}, "robert": {"who": "Bob", "times": 1}})
    code, out, _ = llmq(capsys, "test")
    assert code == 1
    assert "v1.bob.json: stale golden file, v1 has no case 'bob'" in out
    assert "no golden file" in out and "robert" in out
    code, out, _ = llmq(capsys, "test", "--update")
    assert code == 0 and "removed" in out and not (lib / "greet" / "golden" / "v1.bob.json").exists()


def test_a_file_whose_variables_do_not_match_its_schema_fails_the_test_and_the_push(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "lib", messages=[{"role": "user", "content": "Hi {{ who }} {{ times }} {{ extra }}"}])
    code, out, _ = llmq(capsys, "test")
    assert code == 1 and str(path) in out and "extra not in input.properties" in out
    code, _, err = llmq(capsys, "push")
    assert code == 1 and "nothing pushed" in err and str(path) in err


def test_push_label_list_show_render_and_roll_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_client: redis.Redis
) -> None:
    lib = tmp_path / "lib"
    write(lib)
    write(lib, 2, messages=[{"role": "user", "content": "Say hi to {{ who }}, {{ times }}x."}])
    code, out, _ = llmq(capsys, "push")
    assert code == 0 and out.count("published") == 2
    code, out, _ = llmq(capsys, "push")
    assert code == 0 and out.count("unchanged") == 2

    assert llmq(capsys, "label", "greet", "production=1", "canary=1:90,2:10")[0] == 0
    code, out, _ = llmq(capsys, "list")
    assert code == 0 and "greet" in out and "canary=1:90,2:10 production=1" in out
    code, out, _ = llmq(capsys, "show", "greet@production", "--json")
    shown = json.loads(out)
    assert (shown["version"], shown["labels"]["production"]) == (1, "1")

    code, out, _ = llmq(capsys, "render", "greet@production", "--var", "who=Ada", "--var", "times=3", "--json")
    assert code == 0 and json.loads(out)[-1] == {"role": "user", "content": "Greet Ada 3 times."}
    code, _, err = llmq(capsys, "render", "greet@2", "--var", "who=Ada", "--var", "times=three")
    assert code == 1 and "times" in err and "not of type 'integer'" in err
    code, out, _ = llmq(capsys, "render", "greet@2", "--var", "who=Ada", "--var", "times=1")
    assert code == 0 and "Say hi to Ada, 1x." in out

    # roll forward, then back: labels move, versions stay
    code, out, _ = llmq(capsys, "label", "greet", "production=2")
    assert code == 0 and "greet@production: 1 -> 2" in out
    code, out, _ = llmq(capsys, "label", "greet", "production=1")
    assert code == 0 and "greet@production: 2 -> 1" in out
    code, _, err = llmq(capsys, "label", "greet", "production=7")
    assert code == 1 and "no published v7" in err


def test_pushing_a_changed_published_version_is_refused_and_names_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_client: redis.Redis
) -> None:
    lib = tmp_path / "lib"
    write(lib)
    assert llmq(capsys, "push")[0] == 0
    write(lib, description="edited after publishing")
    write(lib, 2)
    code, _, err = llmq(capsys, "push")
    assert code == 1
    assert "greet v1: the file differs from the published version" in err and "save the change as v2" in err
    assert redis_client.hkeys("llmq:prompt:greet:versions") == [b"1"]  # nothing of this push was published


def test_render_from_files_before_pushing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    code, out, _ = llmq(
        capsys, "render", "summarize@1", "--dir", str(tmp_path / "examples"), "--var", "text=Short.", "--var",
        "sentences=1",
    )  # fmt: skip
    assert code == 0 and "at most 1 sentence.\n\nShort." in out
