"""Example worker tools (deterministic): an order lookup and a calculator.

Start a worker with ``LLMQ_TOOLS=workers.tools.examples`` and name them in a job::

    client.submit({"model": "openai:gpt-4o", "tools": ["lookup_order", "calculate"],
                   "messages": [{"role": "user", "content": "Where is order A-1001?"}]})

``llmq demo`` runs one such job against the simulator. Importing this module registers both tools
in the process-wide registry (that is what a tool module is for).
"""

from __future__ import annotations

import ast
import hashlib
import operator
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from workers.tools.registry import tool

__all__ = ["calculate", "lookup_order"]

_STATUSES = ("processing", "shipped", "in transit", "delivered")
_CARRIERS = ("DHL", "UPS", "FedEx", "La Poste")


@tool(timeout_s=5, idempotent=True)
def lookup_order(
    order_id: Annotated[str, Field(pattern=r"^[A-Z]-\d{4}$", examples=["A-1001"], description="e.g. A-1001")],
) -> dict[str, object]:
    """Look up an order by its id: status, carrier, items and total."""
    digest = hashlib.sha256(order_id.encode()).digest()
    return {
        "order_id": order_id,
        "status": _STATUSES[digest[0] % len(_STATUSES)],
        "carrier": _CARRIERS[digest[1] % len(_CARRIERS)],
        "items": 1 + digest[2] % 5,
        "total_eur": round(10 + (int.from_bytes(digest[3:5], "big") % 50_000) / 100, 2),
    }


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        right = _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](_evaluate(node.left), right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ValueError(f"unsupported expression element: {type(node).__name__}")


@tool(timeout_s=2, idempotent=True)
def calculate(
    expression: Annotated[str, Field(min_length=1, max_length=200, examples=["2 * (3 + 4)"])],
) -> float:
    """Evaluate an arithmetic expression (+ - * / // % ** and parentheses)."""
    return _evaluate(ast.parse(expression, mode="eval"))
