"""The import layers: no cycles between modules, and every import runs the way the architecture does.

Every module of ``workers/``, ``producers/``, ``llmq/`` and ``simulator/`` is read with :mod:`ast`;
every ``import`` counts, wherever it stands: module level, inside a function (a lazy import is
still a dependency, and a cycle hidden in a function body still breaks the day someone moves the
import to the top) and under ``if TYPE_CHECKING:`` (a type is a dependency too: a module that
names a type of a module importing it is half of a cycle; the shared type belongs below both).

The rules:

* **Worker layers**, lowest first (a module may import its own layer and the ones below)::

      contract, connections  <-  llm  <-  settings, routes  <-  guards, accounting, tools, prompts  <-  jobs  <-  runtime

  ``contract`` (the wire contract: pydantic models) and ``connections`` (how both sides reach Redis
  and the broker) are the bottom, shared with the producers; they import nothing of ``workers``
  but themselves (the connections may use the contract, not the other way round), and the contract
  nothing outside the standard library but pydantic.
  ``settings`` and ``routes`` (the environment and the routes file) sit just above the contract,
  above ``llm`` only because the routes file reports a bad file with the error tree's
  ``ConfigurationError`` (``workers.llm.errors``); nothing in ``llm`` reads configuration, its
  modules get what they need injected. ``guards``, ``accounting``, ``tools`` and ``prompts`` are
  one layer: they may use each other (no cycles), ``jobs`` composes them.
* ``workers`` imports nothing of ``producers``, ``llmq`` or ``simulator``.
* ``producers`` (gateway and batch included) import nothing of ``workers`` but ``workers.contract``,
  ``workers.connections`` and their submodules, and nothing of ``llmq`` or ``simulator``.
* ``simulator`` imports nothing of ``workers`` but ``workers.contract``, and nothing of
  ``producers`` or ``llmq``.
* ``llmq`` (the CLI and the local dev stack) is the top: it may import every side; nothing imports it.
* No import cycle between any two modules.
* No module imports another module's private names (``from m import _name``), nor a private module
  (``pkg._mod``) from outside its package, nor uses them as attributes (``runner._call`` of an
  object whose module it imports).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pyparse import parse_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workers", "producers", "llmq", "simulator")
#: The bottom of the worker side, shared with the producers; each imports nothing of workers but itself
#: and what it builds on (the connections know the contract: queue names, the scheduling header).
SHARED = ("workers.contract", "workers.connections")
SHARED_BASE = {"workers.contract": ("workers.contract",), "workers.connections": SHARED}
#: What the wire contract may import from outside the project besides the standard library.
CONTRACT_THIRD_PARTY = frozenset({"pydantic"})

#: The worker side's layers, lowest first; each entry lists module prefixes (a package and its submodules).
WORKER_LAYERS: tuple[tuple[str, ...], ...] = (
    ("workers.contract", "workers.connections"),
    ("workers.llm",),
    ("workers.settings", "workers.routes"),
    ("workers.guards", "workers.accounting", "workers.tools", "workers.prompts"),
    ("workers.jobs",),
    ("workers.runtime",),
)


@dataclass(frozen=True, slots=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (or package, for a name that is not a submodule)
    where: str  # path:line of the import statement

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}  ({self.where})"


def find_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the given top-level packages."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree: module level, in functions, under ``if TYPE_CHECKING:``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def all_imports(root: Path, modules: Mapping[str, Path]) -> list[Edge]:
    """Every import of the given modules, function-level and ``TYPE_CHECKING`` ones included,
    outside the project too (the target is then the imported module's dotted name).

    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg`` itself.
    """
    edges: set[Edge] = set()
    for module, path in modules.items():
        rel = path.relative_to(root)
        for node in _imports(parse_file(path)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, path, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target != module:
                    edges.add(Edge(module, target, f"{rel}:{node.lineno}"))
    return sorted(edges, key=lambda e: (e.source, e.target, e.where))


def import_edges(root: Path, modules: Mapping[str, Path], packages: Iterable[str] = PACKAGES) -> list[Edge]:
    """Every import between the given packages' modules (see :func:`all_imports`)."""
    tops = set(packages)
    return [e for e in all_imports(root, modules) if e.target.split(".")[0] in tops]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def worker_layer(module: str) -> int | None:
    for level, prefixes in enumerate(WORKER_LAYERS):
        if any(_within(module, p) for p in prefixes):
            return level
    return None


def layer_violations(edges: Iterable[Edge]) -> list[str]:
    """Why each offending edge is wrong, one line each (empty when every import runs the right way)."""
    problems: list[str] = []
    for edge in edges:
        src_top, dst_top = edge.source.split(".")[0], edge.target.split(".")[0]
        if dst_top == "llmq" and src_top != "llmq":
            problems.append(f"{edge}: nothing imports the CLI (llmq is the top layer)")
        elif src_top == "workers":
            if dst_top != "workers":
                problems.append(f"{edge}: workers import nothing of {dst_top}")
                continue
            src, dst = worker_layer(edge.source), worker_layer(edge.target)
            shared = next((p for p in SHARED if _within(edge.source, p)), None)
            base = SHARED_BASE.get(shared or "", ())
            if shared is not None and not any(_within(edge.target, b) for b in base) and edge.target != "workers":
                also = "".join(f" and {b}" for b in base if b != shared)
                problems.append(f"{edge}: {shared} imports nothing of workers but itself{also}")
            elif src is None and edge.source != "workers":
                problems.append(f"{edge}: {edge.source} is in no layer (add its room to WORKER_LAYERS)")
            elif dst is None and edge.target != "workers":
                problems.append(f"{edge}: {edge.target} is in no layer (add its room to WORKER_LAYERS)")
            elif src is not None and dst is not None and dst > src:
                problems.append(
                    f"{edge}: layer {src} {WORKER_LAYERS[src]} may not import layer {dst} {WORKER_LAYERS[dst]}"
                )
        elif src_top in ("producers", "simulator"):
            allowed = SHARED if src_top == "producers" else ("workers.contract",)
            if dst_top == "workers" and not any(_within(edge.target, p) for p in allowed):
                problems.append(f"{edge}: {src_top} import nothing of workers but {' and '.join(allowed)}")
            elif src_top == "simulator" and dst_top == "producers":
                problems.append(f"{edge}: the simulator imports nothing of producers")
            elif src_top == "producers" and dst_top == "simulator":
                problems.append(f"{edge}: producers import nothing of the simulator")
    return problems


def private_imports(root: Path, modules: Mapping[str, Path]) -> list[str]:
    """``from m import _name`` of another of our modules, and ``pkg._mod`` imported from outside ``pkg``."""
    problems: list[str] = []
    for module, path in modules.items():
        rel = path.relative_to(root)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _imports(parse_file(path)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, path, node)
                if base.split(".")[0] not in PACKAGES or base == module:
                    continue
                targets = [base]
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        targets.append(full)
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        problems.append(f"{module} imports {alias.name} of {base}  ({rel}:{node.lineno})")
            for target in targets:
                if target.split(".")[0] not in PACKAGES:
                    continue
                parts = target.split(".")
                for i, part in enumerate(parts):
                    owner = ".".join(parts[:i])
                    if part.startswith("_") and not part.startswith("__") and not _within(package, owner):
                        problems.append(f"{module} imports the private module {target}  ({rel}:{node.lineno})")
                        break
    return problems


def _private_names(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, module names, attributes it assigns
    (``self._x = ...``), ``__slots__`` entries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ = ("_conn", ...)
    return {n for n in names if _is_private(n)}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_attributes(root: Path, modules: Mapping[str, Path]) -> list[str]:
    """``obj._name`` where ``_name`` is private to another of our modules: one this module imports
    (at any level) defines it and this module does not (``runner._call`` in the tool loop, with the
    runner's module imported for its type). ``self._x`` / ``cls._x`` are a class's own; a private
    name of a library (kombu's ``connection._deliver``) is not ours to police here."""
    trees = {module: parse_file(path) for module, path in modules.items()}
    defined = {module: _private_names(tree) for module, tree in trees.items()}
    imported: dict[str, set[str]] = {}
    for edge in all_imports(root, modules):
        imported.setdefault(edge.source, set()).add(edge.target)
    problems: list[str] = []
    for module, tree in trees.items():
        rel = modules[module].relative_to(root)
        own = defined[module]
        for node in sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
            if not isinstance(node, ast.Attribute) or not _is_private(node.attr) or node.attr in own:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = sorted(m for m in imported.get(module, ()) if node.attr in defined.get(m, ()))
            if owners:
                problems.append(
                    f"{module} uses {ast.unparse(node)}, private to {', '.join(owners)}  ({rel}:{node.lineno})"
                )
    return problems


def contract_leaks(edges: Iterable[Edge]) -> list[str]:
    """Imports of the wire contract from outside the project that are neither the standard library
    nor pydantic (a client library, a socket helper: those belong in ``workers.connections``)."""
    problems: list[str] = []
    for edge in edges:
        top = edge.target.split(".")[0]
        if not _within(edge.source, "workers.contract") or top in PACKAGES:
            continue
        if top not in sys.stdlib_module_names and top != "__future__" and top not in CONTRACT_THIRD_PARTY:
            problems.append(f"{edge}: the wire contract imports pydantic and the standard library only")
    return problems


def find_cycles(edges: Iterable[Edge]) -> list[list[Edge]]:
    """One cycle (as the edges that close it) per strongly connected group of modules."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
        graph.setdefault(edge.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph has a few hundred nodes, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph[node]:
            if edge.target not in index:
                connect(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: Mapping[str, list[Edge]], group: set[str]) -> list[Edge]:
    """A shortest cycle through the group's first module (breadth-first back to it)."""
    start = min(group)
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came_by[path[0].source])
                    return path
                if edge.target in group and edge.target not in came_by:
                    came_by[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - Tarjan said there is one


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges(ROOT, find_modules(ROOT))


def test_the_reader_sees_the_imports_that_matter(edges: list[Edge]) -> None:
    seen = {(e.source, e.target) for e in edges}
    # module level, a plain `import`, and imports inside function bodies
    assert ("workers.runtime.app", "workers.settings") in seen
    assert ("producers.client", "workers.contract") in seen
    assert any(e.source == "llmq.commands.limits" and e.target == "workers.routes" for e in edges)


def test_no_import_runs_against_the_layers(edges: list[Edge]) -> None:
    problems = layer_violations(edges)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_contract_is_pydantic_and_the_standard_library() -> None:
    problems = contract_leaks(all_imports(ROOT, find_modules(ROOT, ["workers"])))
    assert not problems, "\n".join(problems)


def test_no_module_imports_private_names_of_another() -> None:
    problems = private_imports(ROOT, find_modules(ROOT))
    assert not problems, "\n".join(problems)


def test_no_module_uses_private_attributes_of_another() -> None:
    problems = private_attributes(ROOT, find_modules(ROOT))
    assert not problems, "\n".join(problems)


def test_no_import_cycles(edges: list[Edge]) -> None:
    cycles = find_cycles(edges)
    described = ["\n".join(f"  {edge}" for edge in cycle) for cycle in cycles]
    assert not cycles, "import cycles:\n" + "\n\n".join(described)


def test_every_worker_module_sits_in_a_layer() -> None:
    unplaced = [m for m in find_modules(ROOT, ["workers"]) if m != "workers" and worker_layer(m) is None]
    assert not unplaced, f"worker modules in no layer (add their room to WORKER_LAYERS): {unplaced}"


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_catch_upward_imports_cycles_and_leaks(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "workers/__init__.py": "",
            "workers/contract/__init__.py": "import typing\nif typing.TYPE_CHECKING:\n    import workers.routes\n",
            "workers/contract/keys.py": "import json\nimport redis\nfrom pydantic import BaseModel\n",
            "workers/contract/job.py": "from workers.connections import redisurl\n",
            "workers/connections/__init__.py": "",
            "workers/connections/redisurl.py": "import redis\n",
            "workers/routes.py": "def f():\n    from workers.guards import ratelimit\n",
            "workers/guards/__init__.py": "",
            "workers/guards/ratelimit.py": "from workers.routes import f\n",
            "workers/runtime/__init__.py": "",
            "workers/runtime/app.py": "from . import task\n",
            "workers/runtime/task.py": "def g():\n    from workers.runtime.app import x\n",
            "workers/runtime/state.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers.runtime import broker\n",
            "workers/runtime/broker.py": "from workers.runtime.state import y\n",
            "producers/__init__.py": "",
            "producers/client.py": "from workers.connections.redisurl import x\n",
            "producers/gateway/__init__.py": "",
            "producers/gateway/errors.py": "from workers.contract import redact\nimport workers.llm.errors\n",
            "simulator/__init__.py": "from workers.connections import redisurl\n",
            "workers/llm/__init__.py": "",
            "workers/llm/_http.py": "_POOL = 1\n",
            "workers/llm/openai.py": "from workers.llm._http import Client\nfrom . import _http\n",
            "workers/guards/model.py": "from workers.llm._http import Client\nfrom workers.llm.openai import _parse\n",
            "workers/jobs/__init__.py": "",
            "workers/jobs/pipeline.py": "class Runner:\n    def _call(self):\n        self._n = 1\n",
            "workers/jobs/toolloop.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers.jobs.pipeline import Runner\n"
                "def loop(runner, conn):\n    runner._call()\n    conn._deliver()\n    return runner._n\n"
            ),
        },
    )
    assert private_imports(tmp_path, find_modules(tmp_path)) == [
        "workers.guards.model imports the private module workers.llm._http  (workers/guards/model.py:1)",
        "workers.guards.model imports _parse of workers.llm.openai  (workers/guards/model.py:2)",
    ]
    assert private_attributes(tmp_path, find_modules(tmp_path)) == [
        "workers.jobs.toolloop uses runner._call, private to workers.jobs.pipeline  (workers/jobs/toolloop.py:5)",
        "workers.jobs.toolloop uses runner._n, private to workers.jobs.pipeline  (workers/jobs/toolloop.py:7)",
    ]
    edges = import_edges(tmp_path, find_modules(tmp_path))
    problems = layer_violations(edges)
    assert len(problems) == 5, problems
    assert problems[0].startswith("producers.gateway.errors -> workers.llm.errors  (producers/gateway/errors.py:2)")
    assert problems[1].startswith("simulator -> workers.connections.redisurl  (simulator/__init__.py:1): simulator")
    assert problems[2] == (
        "workers.contract -> workers.routes  (workers/contract/__init__.py:3): workers.contract imports nothing of "
        "workers but itself"
    )
    assert problems[3].startswith("workers.contract.job -> workers.connections.redisurl  (workers/contract/job.py:1)")
    assert problems[4].startswith("workers.routes -> workers.guards.ratelimit  (workers/routes.py:2): layer 2")
    leaks = contract_leaks(all_imports(tmp_path, find_modules(tmp_path, ["workers"])))
    assert leaks == [
        "workers.contract.keys -> redis  (workers/contract/keys.py:2): the wire contract imports pydantic and "
        "the standard library only"
    ]
    cycles = {tuple(e.source for e in cycle) for cycle in find_cycles(edges)}
    assert cycles == {
        ("workers.guards.ratelimit", "workers.routes"),
        ("workers.runtime.app", "workers.runtime.task"),
        ("workers.runtime.broker", "workers.runtime.state"),  # one side only under TYPE_CHECKING: still a cycle
    }
