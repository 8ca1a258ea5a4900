"""``llmq prompts``: the prompt library workflow (write, test, push, label, roll back).

    llmq prompts test [DIR] [--update]                      golden files: render every case, diff
    llmq prompts push [DIR]                                 publish every version (immutable)
    llmq prompts label NAME production=3 [staging=4:90,5:10 ...]   move labels (a split by job id)
    llmq prompts list [--json]
    llmq prompts show NAME[@N|@label] [--json]
    llmq prompts render NAME[@N|@label] --var k=v ... [--dir DIR] [--json]

``DIR`` defaults to ``LLMQ_PROMPTS_DIR`` (``./prompts``); Redis is ``LLMQ_REDIS_URL``. Rolling
back is moving a label to an older version. Worker-side modules are imported inside the
functions, never at import time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmq.commands.table import print_table
from workers.connections.redisclient import redis_client

__all__ = ["parse_label", "parse_vars", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prompts", help="versioned prompts: test, push, label, list, show, render")
    psub = p.add_subparsers(dest="prompts_command", required=True, metavar="SUBCOMMAND")

    t = psub.add_parser("test", help="render every case of every version and compare with the golden files")
    t.add_argument("dir", nargs="?", help="prompt library (default: LLMQ_PROMPTS_DIR or ./prompts)")
    t.add_argument("--update", action="store_true", help="rewrite the golden files (and delete stale ones)")
    t.set_defaults(func=_test)

    s = psub.add_parser("push", help="publish every version file to Redis (a published version never changes)")
    s.add_argument("dir", nargs="?", help="prompt library (default: LLMQ_PROMPTS_DIR or ./prompts)")
    s.set_defaults(func=_push)

    b = psub.add_parser("label", help="move labels: production=3, or a split production=3:90,4:10")
    b.add_argument("name")
    b.add_argument("assignments", nargs="+", metavar="LABEL=VERSIONS")
    b.set_defaults(func=_label)

    ls = psub.add_parser("list", help="published prompts, their versions and labels")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    sh = psub.add_parser("show", help="one published version (NAME, NAME@3, NAME@production)")
    sh.add_argument("ref", metavar="NAME[@N|@label]")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=_show)

    r = psub.add_parser("render", help="preview the messages a version renders for some variables")
    r.add_argument("ref", metavar="NAME[@N|@label]")
    r.add_argument("--var", action="append", default=[], metavar="K=V", help="a variable (JSON for non-strings)")
    r.add_argument("--dir", help="render from the files in DIR instead of what is published in Redis")
    r.add_argument("--json", action="store_true", help="print the messages as JSON")
    r.set_defaults(func=_render)


# --- parsing --------------------------------------------------------------------------------------


def parse_label(assignment: str) -> tuple[str, Any]:
    """``production=3`` or ``production=3:90,4:10`` -> (label, PromptLabel)."""
    from workers.contract import LabelTarget, PromptLabel

    label, sep, spec = assignment.partition("=")
    if not sep or not label or not spec:
        raise ValueError(f"{assignment!r}: expected LABEL=VERSION or LABEL=V:WEIGHT,V:WEIGHT")
    targets = []
    for part in spec.split(","):
        number, _, weight = part.strip().removeprefix("v").partition(":")
        if not number.isdigit() or (weight and not weight.isdigit()):
            raise ValueError(f"{assignment!r}: {part!r} is not VERSION or VERSION:WEIGHT")
        targets.append(LabelTarget(version=int(number), weight=int(weight) if weight else 100))
    return label, PromptLabel(targets=targets)


def parse_vars(pairs: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """``k=v`` pairs; a value is kept as text when the schema says string, else parsed as JSON."""
    properties = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--var {pair!r}: expected K=V")
        if (properties.get(key) or {}).get("type", "string") == "string":
            out[key] = value
        else:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
    return out


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, _, which = ref.partition("@")
    return name, which or None


def _library(arg: str | None) -> Path:
    from workers.settings import get_settings

    return Path(arg or get_settings().prompts_dir)


def _store() -> Any:

    from workers.prompts.store import PromptStore
    from workers.settings import get_settings

    return PromptStore(
        redis_client(get_settings().redis_url, max_connections=8, socket_connect_timeout=2.0, socket_timeout=5.0)
    )


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


# --- commands ------------------------------------------------------------------------------------------


def _test(args: argparse.Namespace) -> int:
    from llmq.golden import check_library

    report = check_library(_library(args.dir), update=args.update)
    for line in [*report.notes, *report.failures]:
        print(line)
    for path in report.updated:
        print(f"updated {path}")
    for path in report.removed:
        print(f"removed {path}")
    print(report.summary())
    return 0 if report.ok else 1


def _push(args: argparse.Namespace) -> int:
    from workers.prompts.loader import PromptFileError, load_library
    from workers.prompts.store import PublishConflictError

    try:
        versions = load_library(_library(args.dir))
    except (PromptFileError, FileNotFoundError) as exc:
        return _fail(f"nothing pushed: {exc}")
    store = _store()
    conflicts = []
    for version in versions:  # check everything first: a conflict publishes nothing
        try:
            existing = store.get(version.name, version.version)
        except LookupError:
            continue
        if existing.hash != version.hash:
            conflicts.append(
                f"{version.name} v{version.version}: the file differs from the published version "
                f"(published versions are immutable: save the change as v{store.next_version(version.name)})"
            )
    if conflicts:
        return _fail("nothing pushed:\n  " + "\n  ".join(conflicts))
    try:
        for version in versions:
            done = store.publish(version)
            print(f"{done.outcome:<9}  {done.name} v{done.version}  {done.hash[:12]}")
    except PublishConflictError as exc:
        return _fail(str(exc))
    return 0


def _label(args: argparse.Namespace) -> int:
    from workers.prompts.store import UnknownPromptError

    try:
        labels = dict(parse_label(a) for a in args.assignments)
        store = _store()
        before = store.labels(args.name)
        store.set_labels(args.name, labels)
    except (ValueError, UnknownPromptError) as exc:
        return _fail(f"no label moved: {exc}")
    for label, target in labels.items():
        old = before.get(label)
        print(f"{args.name}@{label}: {old.describe() if old else '-'} -> {target.describe()}")
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _store()
    rows: list[dict[str, Any]] = []
    for name in store.names():
        versions = store.versions(name)
        labels = store.labels(name)
        rows.append(
            {
                "name": name,
                "versions": [v.version for v in versions],
                "labels": {k: v.describe() for k, v in labels.items()},
                "description": versions[-1].description if versions else "",
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no published prompts (llmq prompts push)")
        return 0
    table = [["NAME", "VERSIONS", "LABELS", "DESCRIPTION"]]
    for row in rows:
        labels = " ".join(f"{k}={v}" for k, v in row["labels"].items()) or "-"
        table.append([row["name"], ",".join(map(str, row["versions"])), labels, row["description"]])
    print_table(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    name, which = _split_ref(args.ref)
    store = _store()
    try:
        version = store.resolve(name, which)
    except LookupError as exc:
        return _fail(str(exc))
    labels = {k: v.describe() for k, v in store.labels(name).items()}
    body = version.model_dump(mode="json") | {"labels": labels}
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    print(f"{version.name} v{version.version}  hash {version.hash}")
    if version.description:
        print(version.description)
    print("labels: " + (" ".join(f"{k}={v}" for k, v in labels.items()) or "-"))
    print("input: " + json.dumps(version.input, ensure_ascii=False))
    defaults = version.defaults.model_dump(exclude_none=True)
    if defaults:
        print("defaults: " + json.dumps(defaults, ensure_ascii=False))
    for message in version.messages:
        print(f"\n[{message.role}]\n{message.content}")
    if version.cases:
        print("\ncases: " + ", ".join(version.cases))
    return 0


def _render(args: argparse.Namespace) -> int:
    from producers.prompts import variable_errors
    from workers.prompts.loader import PromptFileError, load_library
    from workers.prompts.render import render_version
    from workers.prompts.sandbox import PromptSandbox, SandboxError

    name, which = _split_ref(args.ref)
    try:
        if args.dir:
            found = [v for v in load_library(Path(args.dir)) if v.name == name]
            if which and which.isdigit():
                found = [v for v in found if v.version == int(which)]
            elif which and which != "latest":
                return _fail(f"--dir renders files: name a version number, not the label {which!r}")
            if not found:
                return _fail(f"no prompt {args.ref} in {args.dir}")
            version = found[-1]
        else:
            version = _store().resolve(name, which)
        variables = parse_vars(args.var, dict(version.input))
    except (LookupError, ValueError, PromptFileError) as exc:
        return _fail(str(exc))
    errors = variable_errors(version, variables)
    if errors:
        return _fail("\n".join(f"{'.'.join(map(str, e['loc'][2:]))}: {e['msg']}" for e in errors))
    try:
        messages = render_version(version, variables, PromptSandbox())
    except SandboxError as exc:
        return _fail(f"{version.name} v{version.version}: {exc}")
    if args.json:
        print(
            json.dumps([m.model_dump(mode="json", exclude_none=True) for m in messages], indent=2, ensure_ascii=False)
        )
        return 0
    print(f"# {version.name} v{version.version} ({version.hash[:12]})")
    for message in messages:
        print(f"\n[{message.role}]\n{message.content}")
    return 0
