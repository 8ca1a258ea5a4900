"""Running a handler: results rendered, redacted and capped; timeouts and cancel via the token."""

from __future__ import annotations

import threading

from workers.tools import CancelToken, ToolRegistry, tool
from workers.tools.examples import calculate, lookup_order
from workers.tools.execute import cap_text, render_error, render_value, start


def test_values_are_rendered_as_text_redacted_and_capped() -> None:
    assert render_value("plain", 100) == "plain"
    assert render_value({"a": [1, 2]}, 100) == '{"a":[1,2]}'
    assert render_value("key sk-proj-abcdefghijklmnop0123", 100) == "key [redacted]"
    long = render_value("x" * 10_000, 1000)
    assert len(long.encode()) <= 1000 and long.endswith("[truncated 9000 bytes]")
    cut = cap_text("é" * 100, 61)  # never cuts inside a UTF-8 sequence
    assert cut.startswith("é" * 18) and len(cut.encode()) <= 61
    assert (
        render_error(RuntimeError("Authorization: Bearer abc.def")) == "RuntimeError: Authorization: Bearer [redacted]"
    )


def test_a_handler_gets_a_cancel_token_and_can_stop_early() -> None:
    registry = ToolRegistry()
    seen: list[bool] = []

    @tool(registry=registry)
    def wait_for_it(cancel: CancelToken) -> str:
        seen.append(cancel.wait(30))
        cancel.raise_if_cancelled()
        return "never"

    spec = registry.get("wait_for_it")
    assert spec is not None and spec.cancel_param == "cancel"
    wake = threading.Event()
    call = start(spec, {}, timeout_s=30, wake=wake)
    assert not call.done
    call.token.cancel("timeout")
    assert call.finished.wait(10) and wake.is_set()
    assert seen == [True]
    assert call.cancelled_by_handler and str(call.error) == "timeout"


def test_a_handler_exception_is_kept_not_raised() -> None:
    registry = ToolRegistry()

    @tool(registry=registry)
    def fail() -> str:
        raise ValueError("nope")

    spec = registry.get("fail")
    assert spec is not None
    wake = threading.Event()
    call = start(spec, {}, timeout_s=5, wake=wake)
    assert call.finished.wait(10)
    assert isinstance(call.error, ValueError) and call.value is None


def test_example_tools_are_deterministic() -> None:
    assert lookup_order("A-1001") == lookup_order("A-1001")
    assert set(lookup_order("B-2002")) == {"order_id", "status", "carrier", "items", "total_eur"}
    assert calculate("2 * (3 + 4)") == 14
    assert calculate("-2 ** 3 / 4") == -2.0
    for bad in ("__import__('os')", "2 ** 1000", "a + 1"):
        try:
            calculate(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was evaluated")
