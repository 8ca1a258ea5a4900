"""The config examples the README and the config module show are valid configs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import workers.config
from workers.config import LLMQConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_routes_file_example_loads() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        LLMQConfig.model_validate(tomllib.loads(block))


def test_the_config_module_example_loads() -> None:
    doc = workers.config.__doc__ or ""
    example = doc.split("Example::", 1)[1].split("Every table forbids", 1)[0]
    LLMQConfig.model_validate(tomllib.loads("\n".join(line[4:] for line in example.splitlines())))
