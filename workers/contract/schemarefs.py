"""JSON Schemas without ``$ref``: for providers whose schema dialect has no references (Gemini).

A schema generated from nested pydantic models (or written with ``$defs``) points into its own
``$defs``/``definitions``; :func:`inline_refs` replaces each such local ``$ref`` by a copy of what
it points to. A recursive schema (a tree, a linked list) cannot be written out: it raises
:class:`RecursiveRefError`, or, with ``cycles="cut"``, the recursion is cut to ``{"type":
"object"}`` at its second occurrence (a looser schema: the worker still validates tool arguments
and answers against the full one).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["RecursiveRefError", "inline_refs"]

_DEFINITIONS = ("$defs", "definitions")


class RecursiveRefError(ValueError):
    """A ``$ref`` that refers, directly or not, to a schema containing it."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"the schema is recursive ({ref} refers to itself)")
        self.ref = ref


def _pointer(root: dict[str, object], ref: str) -> object | None:
    """What a local JSON pointer (``#/$defs/Item``) names in ``root``, or None."""
    if not ref.startswith("#/"):
        return None
    node: object = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def inline_refs(schema: object, *, cycles: Literal["refuse", "cut"] = "refuse") -> object:
    """``schema`` with its local ``$ref``s inlined and its top-level definitions dropped.

    Keywords beside a ``$ref`` (a ``description``) are kept over the target's; a ``$ref`` that does
    not resolve locally is left as it is.
    """
    if not isinstance(schema, dict):
        return schema
    root = schema

    def walk(node: object, active: frozenset[str]) -> object:
        if isinstance(node, list):
            return [walk(item, active) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        target = _pointer(root, ref) if isinstance(ref, str) else None
        if isinstance(ref, str) and target is not None:
            if ref in active:
                if cycles == "refuse":
                    raise RecursiveRefError(ref)
                return {"type": "object"}
            inlined = walk(target, active | {ref})
            siblings = {k: walk(v, active) for k, v in node.items() if k != "$ref"}
            return {**inlined, **siblings} if isinstance(inlined, dict) else inlined
        return {k: walk(v, active) for k, v in node.items() if not (node is root and k in _DEFINITIONS)}

    return walk(schema, frozenset())
