"""Helpers to write prompt files for the prompt tests."""

from __future__ import annotations

from pathlib import Path

import yaml

SUMMARY = {
    "name": "summary",
    "version": 1,
    "description": "test prompt",
    "input": {"type": "object", "properties": {"text": {"type": "string"}, "n": {"type": "integer"}}},
    "defaults": {"model": "openai:gpt-4o-mini", "max_tokens": 64},
    "messages": [
        {"role": "system", "content": "Summaries of {{ n }} sentences."},
        {"role": "user", "content": "Summarize: {{ text }}"},
    ],
    "cases": {"short": {"text": "Hello world.", "n": 1}},
}


def write_prompt(root: Path, body: dict, *, name: str | None = None, file: str | None = None) -> Path:
    path = root / (name or body["name"]) / (file or f"v{body['version']}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path
