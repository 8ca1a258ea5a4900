"""The ``[tools]`` table of the routes file: which modules to import, limits of the tool loop.

Example::

    [tools]
    modules = ["myapp.tools", "workers.tools.examples"]
    timeout_s = 30              # per call, unless the tool or [tools.timeouts] says otherwise
    max_result_bytes = 65536    # a longer result is cut (and says so)
    max_parallel = 4            # calls of one turn running at once, per job
    max_turns = 10              # model turns per job, unless the job sets max_turns
    max_invalid = 2             # invalid calls of one tool before the job fails (tool_arguments)

    [tools.timeouts]
    get_weather = 5
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ToolsConfig"]


class ToolsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    modules: list[str] = Field(default_factory=list)
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    max_result_bytes: Annotated[int, Field(ge=256)] = 64 * 1024
    max_parallel: Annotated[int, Field(ge=1, le=64)] = 4
    max_turns: Annotated[int, Field(ge=1, le=100)] = 10
    max_invalid: Annotated[int, Field(ge=1)] = 2
    timeouts: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
