"""A Lua script's call queued on a redis-py pipeline as a plain ``EVALSHA``.

``Script.__call__(..., client=pipe)`` costs a few microseconds of redis-py bookkeeping per call
(its keyword handling and the pipeline's command dispatch); a bulk step that queues thousands of
calls (the provider batcher's) queues the command itself. The script is added to the pipeline's
``scripts`` set, so the pipeline loads it first when Redis does not have it (a restart, a flush),
exactly as ``Script.__call__`` would have it do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["queue_script"]


def queue_script(pipe: Any, script: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> None:
    """Queue ``script`` on ``pipe`` for ``keys`` and ``args`` (its reply comes with the pipeline's)."""
    pipe.scripts.add(script)
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
