"""What a worker's tools are: modules from LLMQ_TOOLS and the routes file, limits from [tools]."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.llm.errors import ConfigurationError
from workers.routes import load_config
from workers.tools import ToolRegistry, tool
from workers.tools.config import ToolsConfig
from workers.tools.toolbox import Toolbox, import_tool_modules, module_names


def test_modules_come_from_the_env_then_the_routes_file(tmp_path: Path) -> None:
    path = tmp_path / "llmq.toml"
    path.write_text('[tools]\nmodules = ["b.tools", "a.tools"]\ntimeout_s = 12\n\n[tools.timeouts]\nslow = 2\n')
    config = load_config(path).tools
    assert module_names(" a.tools, c.tools ,", config) == ["a.tools", "c.tools", "b.tools"]
    assert (config.timeout_s, config.timeouts, config.max_parallel, config.max_turns) == (12, {"slow": 2}, 4, 10)
    path.write_text("[tools]\ntimeout = 3\n")
    with pytest.raises(ConfigurationError, match=r"tools\.timeout"):
        load_config(path)


def test_a_module_that_fails_to_import_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(
        ConfigurationError, match=r"tool module 'tests.support.nope' .*failed to import: ModuleNotFoundError"
    ):
        import_tool_modules(["tests.support.nope"])


def test_timeouts_the_routes_file_then_the_tool_then_the_default() -> None:
    registry = ToolRegistry()

    @tool(registry=registry, timeout_s=5, max_invalid=3)
    def own() -> str:
        return ""

    @tool(registry=registry)
    def plain() -> str:
        return ""

    box = Toolbox(ToolsConfig(timeout_s=20, timeouts={"own": 1}), registry)
    own_spec, plain_spec = registry.get("own"), registry.get("plain")
    assert own_spec is not None and plain_spec is not None
    assert (box.timeout_s(own_spec), box.timeout_s(plain_spec)) == (1, 20)
    assert (box.max_invalid(own_spec), box.max_invalid(plain_spec)) == (3, 2)
    assert [(i.name, i.timeout_s) for i in box.infos()] == [("own", 1), ("plain", 20)]
