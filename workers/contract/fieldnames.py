"""The keys a pydantic model allows at a place, for "did you mean" on an unknown key.

A config table (``workers/routes.py``) or a job (``producers/core.py``) with a key its model forbids
(``extra="forbid"``: ``max_retires``, ``max_token``) is refused naming the nearest allowed key.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel

from workers.contract.catalog import close_names

__all__ = ["allowed_keys", "unknown_key_message"]


def _members(annotation: Any) -> list[Any]:
    """``Annotated[X, ...]``, ``X | None`` and ``X | Y`` -> ``[X, Y]`` (None dropped)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) if a is not type(None) for m in _members(a)]
    return [annotation]


def _models(candidates: list[Any]) -> list[type[BaseModel]]:
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by the names a caller writes (the alias where there is one: ``schema``)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys the object at ``loc`` (an unknown key's location, without the key) may hold.

    pydantic's locations also hold a union's labels (``messages.0.user.x``: the tag ``user``;
    ``content.list[...]``, ``tools.0.Tool``): a part is read both as a key and as such a label, so
    the answer may hold a few keys too many, never too few (it only feeds suggestions)."""
    candidates: list[Any] = [model]
    for part in loc:
        following: list[Any] = []
        for annotation in candidates:
            origin = typing.get_origin(annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                field = _fields(annotation).get(str(part))
                if field is not None:
                    following += _members(field.annotation)
            elif origin is dict or (isinstance(part, int) and origin in (list, tuple, Sequence)):
                following += _members(typing.get_args(annotation)[-1])  # a mapping's value, a list's item
        if isinstance(part, str):
            following += candidates  # ``part`` as a union's label: the same objects go on
        candidates = following
    return sorted({key for m in _models(candidates) for key in _fields(m)})


def unknown_key_message(model: type[BaseModel], loc: Sequence[int | str]) -> str:
    """``unknown key (did you mean 'max_tokens'?)`` for the key at ``loc`` (its last part)."""
    close = close_names(str(loc[-1]), allowed_keys(model, loc[:-1])) if loc else []
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
