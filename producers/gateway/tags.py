"""Spend tags from a request header: ``x-llmq-tags: checkout, beta`` (comma-separated, repeatable).

The gateway adds them to the job's ``tags`` (after any the body of ``/v1/jobs`` gives), so a caller
of the OpenAI-compatible route, whose body has no place for them, can still tag its spend. The job's
validation judges them (at most 8, each 1-64 of letters, digits, ``_ . : / -``): a bad tag is a 400.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers

__all__ = ["TAGS_HEADER", "with_header_tags"]

TAGS_HEADER = "x-llmq-tags"


def with_header_tags(job: dict[str, Any], headers: Headers) -> dict[str, Any]:
    """``job`` with the header's tags appended to its own (unchanged when the header is absent)."""
    tags = [tag.strip() for value in headers.getlist(TAGS_HEADER) for tag in value.split(",") if tag.strip()]
    if tags:
        own = job.get("tags") or []
        job["tags"] = [*own, *tags] if isinstance(own, list) else own  # a non-list is the job's to refuse
    return job
