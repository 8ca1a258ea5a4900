"""Loading prompt files: the shape, the path, and the variables/schema check at load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.workers.prompts.conftest import SUMMARY, write_prompt
from workers.prompts.loader import PromptFileError, load_file, load_library


def variant(**changes: object) -> dict:
    body = copy.deepcopy(SUMMARY)
    body.update(changes)
    return body


def test_a_valid_file_loads_with_a_normalized_schema_and_a_stable_hash(tmp_path: Path) -> None:
    path = write_prompt(tmp_path, SUMMARY)
    version = load_file(path)
    assert (version.name, version.version, len(version.messages)) == ("summary", 1, 2)
    assert version.input["required"] == ["n", "text"]
    assert version.input["additionalProperties"] is False
    assert load_file(path).hash == version.hash and len(version.hash) == 64
    changed = write_prompt(tmp_path / "other", variant(description="changed"))
    assert load_file(changed).hash != version.hash


def test_a_template_variable_missing_from_the_schema_is_refused_naming_path_and_prompt(tmp_path: Path) -> None:
    body = variant(messages=[{"role": "user", "content": "{{ text }} {{ n }} {{ tone }}"}])
    path = write_prompt(tmp_path, body)
    with pytest.raises(PromptFileError) as err:
        load_file(path)
    assert str(path) in str(err.value) and "'summary'" in str(err.value)
    assert "templates use tone not in input.properties" in str(err.value)


def test_a_schema_property_no_template_uses_is_refused(tmp_path: Path) -> None:
    body = variant(messages=[{"role": "user", "content": "{{ text }}"}], cases={})
    with pytest.raises(PromptFileError, match=r"input\.properties has n no template uses"):
        load_file(write_prompt(tmp_path, body))


def test_loop_variables_and_set_names_are_not_counted_as_inputs(tmp_path: Path) -> None:
    body = variant(
        input={"type": "object", "properties": {"items": {"type": "array"}}},
        messages=[{"role": "user", "content": "{% set sep = ', ' %}{% for i in items %}{{ i }}{{ sep }}{% endfor %}"}],
        cases={"two": {"items": ["a", "b"]}},
    )
    assert load_file(write_prompt(tmp_path, body)).input["required"] == ["items"]


@pytest.mark.parametrize(
    ("changes", "file", "problem"),
    [
        ({"name": "other"}, None, "differs from its directory"),
        ({}, "v2.yaml", "differs from the file name"),
        ({}, "latest.yaml", "named v<N>.yaml"),
        ({"messages": [{"role": "user", "content": "{{ text "}]}, None, "does not parse"),
        ({"messages": [{"role": "user", "content": "{{ text|attr('x') }} {{ n }}"}]}, None, "No filter named 'attr'"),
        ({"input": {"type": "object", "properties": {"text": {"type": "strin"}}}}, None, "not a valid JSON Schema"),
        ({"cases": {"bad": {"text": "x", "n": "two"}}}, None, "case 'bad'"),
        ({"messages": []}, None, "messages"),
        ({"surprise": 1}, None, "surprise"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, changes: dict, file: str | None, problem: str) -> None:
    path = write_prompt(tmp_path, variant(**changes), name="summary", file=file)
    with pytest.raises(PromptFileError, match=problem):
        load_file(path)


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "summary" / "v1.yaml"
    path.parent.mkdir()
    path.write_text("name: [unclosed", encoding="utf-8")
    with pytest.raises(PromptFileError, match="not readable YAML"):
        load_file(path)


def test_the_library_loads_sorted_by_name_and_number(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        write_prompt(tmp_path, variant(version=n))
    write_prompt(tmp_path, variant(name="alpha"))
    assert [(v.name, v.version) for v in load_library(tmp_path)] == [
        ("alpha", 1),
        ("summary", 1),
        ("summary", 2),
        ("summary", 10),
    ]


def test_the_shipped_examples_load() -> None:
    versions = load_library(Path(__file__).resolve().parents[3] / "prompts")
    assert {v.name for v in versions} >= {"summarize", "support-reply", "extract-json"}
    assert all(v.cases for v in versions)
