"""The ``[tools]`` table of the routes file (:class:`workers.routes.ToolsConfig`).

Its schema lives in :mod:`workers.routes` with the routes file's other tables: the configuration
sits below every room that reads it (``tests/test_layers.py``). Re-exported here for the tool room.
"""

from __future__ import annotations

from workers.routes import ToolsConfig

__all__ = ["ToolsConfig"]
