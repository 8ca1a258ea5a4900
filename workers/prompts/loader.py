"""The prompt library on disk: ``<dir>/<name>/v<N>.yaml``, checked when loaded.

A file is refused (a :class:`PromptFileError` naming its path and the prompt) when it is not valid
YAML, does not match the :class:`~workers.contract.PromptVersion` shape, its name or version do not
match its path, its ``input`` is not a valid JSON Schema of an object, a template does not compile
in the sandbox, the variables the templates use differ from the schema's properties (checked with
``jinja2.meta``), or a golden case's variables do not validate against the schema.

An ``input`` schema without ``required`` gets every property required, and without
``additionalProperties`` gets ``false``: a missing or an extra variable is an error at submit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jinja2 import TemplateError, meta
from pydantic import ValidationError

from workers.contract import PromptVersion
from workers.contract.prompt import normalize_schema
from workers.prompts.sandbox import PromptSandbox, SandboxError

__all__ = ["PromptFileError", "load_file", "load_library", "normalize_schema", "template_variables"]

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.ya?ml$")


class PromptFileError(ValueError):
    """A prompt file that cannot be published; the message names the file and the prompt."""

    def __init__(self, path: str, name: str, problem: str) -> None:
        super().__init__(f"{path}: prompt {name!r}: {problem}")
        self.path = path
        self.name = name
        self.problem = problem


def template_variables(sandbox: PromptSandbox, sources: list[str]) -> set[str]:
    """Every variable the templates read from their context (``jinja2.meta``)."""
    names: set[str] = set()
    for source in sources:
        try:
            ast = sandbox.env.parse(source)
        except TemplateError as exc:
            raise SandboxError(f"template does not parse: {exc}") from None
        try:
            names |= meta.find_undeclared_variables(ast)
        except TemplateError as exc:  # e.g. an unknown (or removed, like ``attr``) filter
            raise SandboxError(f"template does not compile: {exc}") from None
    return names - set(sandbox.env.globals)


def load_file(path: Path, *, sandbox: PromptSandbox | None = None) -> PromptVersion:
    sandbox = sandbox or PromptSandbox()
    name = path.parent.name
    where = str(path)
    match = _VERSION_FILE.match(path.name)
    if not match:
        raise PromptFileError(where, name, "a version file is named v<N>.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PromptFileError(where, name, f"not readable YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PromptFileError(where, name, "the file must be a YAML mapping")
    try:
        version = PromptVersion.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise PromptFileError(where, name, problems) from None
    if version.name != name:
        raise PromptFileError(where, version.name, f"name {version.name!r} differs from its directory {name!r}")
    if version.version != int(match.group(1)):
        raise PromptFileError(where, name, f"version {version.version} differs from the file name {path.name}")
    _check(version, where, sandbox)
    return version


def _check(version: PromptVersion, where: str, sandbox: PromptSandbox) -> None:
    name = version.name
    schema: dict[str, Any] = dict(version.input)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise PromptFileError(where, name, f"input is not a valid JSON Schema: {exc.message}") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise PromptFileError(where, name, "input must be an object schema with properties")
    sources = [m.content for m in version.messages]
    try:
        used = template_variables(sandbox, sources)
        for source in sources:
            sandbox.compile(source)
    except SandboxError as exc:
        raise PromptFileError(where, name, str(exc)) from None
    declared = set(schema["properties"])
    if used != declared:
        problems = []
        if used - declared:
            problems.append(f"templates use {', '.join(sorted(used - declared))} not in input.properties")
        if declared - used:
            problems.append(f"input.properties has {', '.join(sorted(declared - used))} no template uses")
        raise PromptFileError(where, name, "; ".join(problems))
    validator = jsonschema.Draft202012Validator(schema)
    for case, variables in version.cases.items():
        errors = sorted(validator.iter_errors(variables), key=lambda e: list(e.path))
        if errors:
            raise PromptFileError(where, name, f"case {case!r}: {errors[0].message}")


def load_library(directory: Path, *, sandbox: PromptSandbox | None = None) -> list[PromptVersion]:
    """Every version file under ``directory``, sorted by name and version (first bad file raises)."""
    sandbox = sandbox or PromptSandbox()
    if not directory.is_dir():
        raise FileNotFoundError(f"no prompt library at {directory}")
    files = sorted(
        (p for p in directory.glob("*/v*.y*ml") if p.is_file()),
        key=lambda p: (p.parent.name, int(m.group(1)) if (m := _VERSION_FILE.match(p.name)) else 0),
    )
    return [load_file(p, sandbox=sandbox) for p in files]
