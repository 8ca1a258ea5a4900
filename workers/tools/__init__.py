"""Worker tools: a registry of Python callables the worker runs for the model, safely.

``from workers.tools import tool``::

    @tool(timeout_s=5)
    def get_capital(country: Annotated[str, Field(min_length=2)]) -> str:
        \"\"\"The capital city of a country.\"\"\"
        ...

A job names it in ``tools`` (``"tools": ["get_capital"]``); the worker's tool loop
(``workers/jobs/toolloop.py``) validates each call against the schema, runs it with its timeout
and feeds the result back to the model. Journal: ``journal.py``; execution: ``execute.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.tools.registry import (
        REGISTRY,
        CancelToken,
        ToolCancelledError,
        ToolRegistry,
        ToolSpec,
        register_tool,
        tool,
    )

__all__ = ["REGISTRY", "CancelToken", "ToolCancelledError", "ToolRegistry", "ToolSpec", "register_tool", "tool"]


def __getattr__(name: str) -> Any:
    # lazy: the routes file's [tools] table (workers.tools.config) must not pull in jsonschema
    if name in __all__:
        from workers.tools import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'workers.tools' has no attribute {name!r}")
