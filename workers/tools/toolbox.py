"""A worker process's tools: the modules it imported, the registry, the limits from its config.

Built once per process (``WorkerResources.build``): imports every module named in ``LLMQ_TOOLS``
(comma-separated) and in the routes file's ``[tools] modules``; a module that fails to import is a
:class:`~workers.llm.errors.ConfigurationError` naming it, which stops the worker at start.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Iterable
from dataclasses import dataclass

from workers.contract import ToolInfo
from workers.llm.errors import ConfigurationError
from workers.tools.config import ToolsConfig
from workers.tools.registry import REGISTRY, ToolRegistry, ToolSpec

__all__ = ["Toolbox", "import_tool_modules", "module_names"]


def module_names(env_value: str | None, config: ToolsConfig) -> list[str]:
    """``LLMQ_TOOLS`` (comma-separated) then the config's modules, without duplicates."""
    names = [n.strip() for n in (env_value or "").split(",") if n.strip()]
    return list(dict.fromkeys([*names, *config.modules]))


def import_tool_modules(names: Iterable[str]) -> None:
    """Import each tool module (registering its tools); a failure names the module and the cause."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            cause = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            raise ConfigurationError(
                f"tool module {name!r} (LLMQ_TOOLS / [tools] modules) failed to import: {cause}"
            ) from exc


@dataclass
class Toolbox:
    config: ToolsConfig
    registry: ToolRegistry

    @classmethod
    def build(cls, env_value: str | None, config: ToolsConfig, registry: ToolRegistry | None = None) -> Toolbox:
        import_tool_modules(module_names(env_value, config))
        return cls(config, REGISTRY if registry is None else registry)

    def timeout_s(self, spec: ToolSpec) -> float:
        """The routes file's per-tool timeout, else the tool's own, else the config default."""
        configured = self.config.timeouts.get(spec.name)
        if configured is not None:
            return configured
        return spec.timeout_s if spec.timeout_s is not None else self.config.timeout_s

    def max_invalid(self, spec: ToolSpec) -> int:
        return spec.max_invalid if spec.max_invalid is not None else self.config.max_invalid

    def infos(self) -> list[ToolInfo]:
        return [s.info(timeout_s=self.timeout_s(s), max_invalid=self.max_invalid(s)) for s in self.registry.specs()]
