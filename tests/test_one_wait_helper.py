"""The suite waits in one place: ``tests/support/waits.py`` (``until``). A test that polls for a
condition in a ``while`` loop of its own, against ``time.monotonic()``, is refused here: each copy
had its own guard (some of 2 s, too tight on a loaded machine) and its own failure message."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.pyparse import parse_file

TESTS = Path(__file__).resolve().parent
HELPER = TESTS / "support" / "waits.py"


def _reads_the_clock(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Attribute) and n.attr == "monotonic") or (isinstance(n, ast.Name) and n.id == "deadline")
        for n in ast.walk(node)
    )


#: A loop that runs for a set time on purpose (a soak's episode, a load phase), not a wait for a
#: condition, says so on its ``while`` line.
NOT_A_WAIT = "# for a set time, not a wait"


def hand_rolled_waits(root: Path) -> list[str]:
    """``path:line`` of each ``while`` loop that checks the clock (in its condition or an ``assert`` in it)."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if path == HELPER:
            continue
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(parse_file(path, source)):
            if not isinstance(node, ast.While) or NOT_A_WAIT in lines[node.lineno - 1]:
                continue
            asserts = [n for n in ast.walk(node) if isinstance(n, ast.Assert)]
            if _reads_the_clock(node.test) or any(_reads_the_clock(a.test) for a in asserts):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_tests_wait_with_the_one_helper() -> None:
    found = hand_rolled_waits(TESTS)
    assert not found, "wait with tests.support.waits.until instead of a loop of your own:\n" + "\n".join(found)


def test_the_check_sees_a_hand_rolled_wait(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import time\n"
        "def test_a():\n"
        "    deadline = time.monotonic() + 5\n"
        "    while not ready() and time.monotonic() < deadline:\n"
        "        time.sleep(0.1)\n"
        "def test_b():\n"
        "    while not ready():\n"
        "        assert time.monotonic() < deadline\n"
        "def test_c():\n"
        "    while queue:\n"
        "        queue.pop()\n"
        "def soak():\n"
        "    while time.monotonic() < end:  # for a set time, not a wait\n"
        "        submit()\n"
    )
    assert hand_rolled_waits(tmp_path / "tests") == ["tests/test_x.py:4", "tests/test_x.py:7"]
