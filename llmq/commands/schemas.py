"""``llmq schemas``: the JSON Schemas of jobs, results, events, summaries and webhook bodies.

llmq schemas --write docs/schemas      (re)generate the checked-in files
llmq schemas --check docs/schemas      exit 1 when a file differs from what the models generate
llmq schemas                           print them all as one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workers.contract.schemas import json_schemas, rendered


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schemas", help="JSON Schemas of the wire contract (generate or check docs/schemas)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="DIR", help="write one file per schema into DIR")
    group.add_argument("--check", metavar="DIR", help="exit 1 if DIR's files differ from the generated schemas")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    schemas = json_schemas()
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (out / name).write_text(rendered(schema))
        print(f"wrote {len(schemas)} schemas to {out}", file=sys.stderr)
        return 0
    if args.check:
        stale = [
            n
            for n, s in schemas.items()
            if not (Path(args.check) / n).is_file() or (Path(args.check) / n).read_text() != rendered(s)
        ]
        for name in stale:
            print(f"llmq schemas: {Path(args.check) / name} is not what the models generate", file=sys.stderr)
        if stale:
            print(f"llmq schemas: run 'llmq schemas --write {args.check}' and commit the result", file=sys.stderr)
        return 1 if stale else 0
    print(json.dumps(schemas, indent=2))
    return 0
