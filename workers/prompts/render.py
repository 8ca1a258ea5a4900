"""Turning a job into chat messages: ``messages`` as given, or ``template`` + ``variables``.

A template is a ``str.format`` string (``"Summarize: {text}"``) that becomes one user message;
the producer already checked that every placeholder has a variable.
"""

from __future__ import annotations

from workers.contract import CompletionJob, Message

__all__ = ["render_messages"]


def render_messages(job: CompletionJob) -> list[Message]:
    if job.messages is not None:
        return list(job.messages)
    assert job.template is not None  # guaranteed by the contract's validator
    return [Message(role="user", content=job.template.format_map(job.variables))]
