"""``?text=0`` (the browser view without LLMQ_UI_CONTENT): no message text in any event or result,
including what a tool said when it failed (its output is part of the conversation)."""

from __future__ import annotations

import pytest

from producers.gateway.ui import strip_text
from workers.contract import CompletionResult, ErrorInfo, ToolResultEvent
from workers.contract.events import DeltaEvent, DoneEvent, ErrorEvent

SECRET = "PINEAPPLE-7731"


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (f"ValueError: no forecast for {SECRET}", "ValueError"),
        (f"cancelled: {SECRET}", "cancelled"),
        ("invalid arguments: city: is too long", "invalid arguments"),
        ("timed out after 5 s", "timed out after 5 s"),
        ("unknown tool 'x'; the tools are a, b", "unknown tool 'x'; the tools are a, b"),
        (None, None),
    ],
)
def test_a_tool_results_error_keeps_only_its_kind(error: str | None, shown: str | None) -> None:
    event = ToolResultEvent(
        job_id="j", seq=3, turn=1, call_id="c", name="weather", ok=error is None, error=error, preview=SECRET
    )
    stripped = strip_text(event)
    assert isinstance(stripped, ToolResultEvent)
    assert stripped.error == shown and stripped.preview == "" and stripped.name == "weather"


def test_deltas_answers_and_failed_answers_lose_their_text() -> None:
    result = CompletionResult(id="j", status="failed", content=SECRET, error=ErrorInfo(type="timeout", message="slow"))
    for event in (
        DeltaEvent(job_id="j", seq=1, text=SECRET),
        DoneEvent(job_id="j", seq=2, result=result.model_copy(update={"status": "succeeded", "error": None})),
        ErrorEvent(job_id="j", seq=2, error=result.error, result=result),  # type: ignore[arg-type]
    ):
        assert SECRET not in strip_text(event).model_dump_json()
