"""Request parameters in the contract: shapes, the capability table, images (caps and token counts)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from producers.client import InvalidJobError, validate_job
from workers.accounting.image_tokens import anthropic_tokens, image_tokens, openai_tokens
from workers.accounting.tokens import TokenCounter
from workers.contract import CompletionJob, ImagePart, Message
from workers.contract.capabilities import anthropic_native_structured
from workers.contract.images import MAX_IMAGE_BYTES, image_info


def png(width: int, height: int, pad: int = 16) -> str:
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height) + b"\x08\x02\0\0\0"
    return "data:image/png;base64," + base64.b64encode(raw + b"\0" * pad).decode()


def jpeg(width: int, height: int) -> str:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8" + app0 + sof + b"\xff\xd9").decode()


def gif(width: int, height: int) -> str:
    return (
        "data:image/gif;base64," + base64.b64encode(b"GIF89a" + struct.pack("<HH", width, height) + b"\0" * 8).decode()
    )


def webp(width: int, height: int) -> str:
    vp8x = (
        b"VP8X"
        + struct.pack("<I", 10)
        + b"\0\0\0\0"
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )
    return "data:image/webp;base64," + base64.b64encode(b"RIFF" + struct.pack("<I", 30) + b"WEBP" + vp8x).decode()


def job(model: str = "openai:gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def picture(url: str, detail: str = "auto") -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}},
            ],
        }
    ]


# --- shapes --------------------------------------------------------------------------------------


def test_parameters_round_trip_as_json() -> None:
    j = CompletionJob(
        **job(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": True},
            },
            tools=[{"function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "f"}},
            parallel_tool_calls=False,
            stop="END",
            top_p=0.5,
            seed=1,
            user="u",
            reasoning={"effort": "low"},
            messages=picture(png(10, 10)),
        )
    )
    data = j.model_dump(mode="json", exclude_none=True)
    assert data["response_format"]["json_schema"]["schema"] == {"type": "object"}  # the wire name, not schema_
    assert data["stop"] == ["END"]
    assert CompletionJob.model_validate_json(j.model_dump_json()) == j
    assert j.messages is not None and j.messages[0].text == "look" and len(j.messages[0].images) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tool_choice": "required"}, "needs tools"),
        (
            {"tools": [{"function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "not one of the job's tools",
        ),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"reasoning": {}}, "needs 'effort' or 'budget_tokens'"),
        ({"reasoning": {"budget_tokens": 2048}, "max_tokens": 1024}, "below max_tokens"),
        ({"max_repairs": 4}, "less than or equal to 3"),
        ({"response_format": {"type": "xml"}}, "does not match any of the expected tags"),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": png(2, 2)}}]}]},
            "only allowed in 'user' messages",
        ),
    ],
)
def test_invalid_parameters_are_refused_at_submit(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidJobError, match=message):
        validate_job(job(**extra))


# --- capabilities: a provider that cannot do it is named with the field -----------------------------


@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        ("anthropic:claude-sonnet-4-5", {"seed": 1}, "anthropic does not support seed"),
        (
            "openai:gpt-4o",
            {"reasoning": {"budget_tokens": 2048}, "max_tokens": 4096},
            "openai does not support reasoning.budget_tokens",
        ),
        (
            "ollama:llama3.1",
            {"tools": [{"function": {"name": "f"}}], "tool_choice": "required"},
            "ollama does not support tool_choice",
        ),
        (
            "ollama:llama3.1",
            {"tools": [{"function": {"name": "f"}}], "parallel_tool_calls": False},
            "ollama does not support parallel_tool_calls",
        ),
        (
            "ollama:llama3.1",
            {"messages": picture("https://example.com/a.png")},
            r"ollama does not support messages\[0\].image_url",
        ),
        (
            "anthropic:claude-sonnet-4-5",
            {"reasoning": {"effort": "high"}, "temperature": 0.2, "max_tokens": 32000},
            "anthropic does not support temperature",
        ),
        (
            "anthropic:claude-sonnet-4-5",
            {"reasoning": {"effort": "high"}, "max_tokens": 8000},
            "anthropic does not support reasoning",
        ),
        (
            "anthropic:claude-3-5-haiku-20241022",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}}},
            "anthropic does not support response_format",
        ),
    ],
)
def test_capabilities_name_the_provider_and_the_field(model: str, extra: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidJobError, match=expected):
        validate_job(job(model, **extra))
    # a fallback is checked too
    with pytest.raises(InvalidJobError, match=expected):
        validate_job(job("openai:gpt-4o-mini", fallbacks=[model], **extra))


def test_route_aliases_are_checked_on_the_worker_only() -> None:
    j = validate_job(job("default", seed=1))
    assert j.capability_problems("anthropic:claude-sonnet-4-5")[0].field == "seed"
    assert j.capability_problems("openai:gpt-4o") == []
    assert j.capability_problems("custom:anything") == []  # providers outside the table are not checked


def test_anthropic_native_structured_outputs_by_model() -> None:
    for model in (
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-opus-4-1",
        "claude-haiku-4-5~eu",
        "claude-opus-5-0",
    ):
        assert anthropic_native_structured(model), model
    for model in ("claude-3-5-haiku-20241022", "claude-sonnet-4-0", "claude-opus-4-0", "claude-3-opus-latest"):
        assert not anthropic_native_structured(model), model


# --- images ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "size"),
    [(png(640, 480), (640, 480)), (jpeg(1024, 768), (1024, 768)), (gif(7, 9), (7, 9)), (webp(300, 200), (300, 200))],
)
def test_image_dimensions_are_read_from_the_header(url: str, size: tuple[int, int]) -> None:
    info = image_info(url)
    assert (info.width, info.height) == size and info.kind == "data"


def test_an_oversized_image_is_refused_at_submit() -> None:
    too_big = png(100, 100, pad=MAX_IMAGE_BYTES)
    with pytest.raises(InvalidJobError, match="the limit is 20971520 bytes"):
        validate_job(job(messages=picture(too_big)))
    with pytest.raises(InvalidJobError, match="the limit is 8000 px"):
        validate_job(job(messages=picture(png(9000, 10))))
    # Anthropic's own cap is 5 MB per image: fine for OpenAI, refused for a chain with Anthropic
    six_mb = png(100, 100, pad=6 * 1024 * 1024)
    validate_job(job(messages=picture(six_mb)))
    with pytest.raises(
        InvalidJobError, match=r"anthropic does not support messages\[0\].image_url: the image is \d+ bytes"
    ):
        validate_job(job(fallbacks=["anthropic:claude-sonnet-4-5"], messages=picture(six_mb)))


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,!!!!",
        "data:image/bmp;base64,Qk0=",
        "data:text/plain;base64,aGk=",
        "ftp://x/y.png",
        "data:image/png;base64,aGVsbG8gd29ybGQ=",
    ],
)
def test_unusable_images_are_refused(url: str) -> None:
    with pytest.raises(InvalidJobError, match="image"):
        validate_job(job(messages=picture(url)))


# Documented examples: OpenAI's vision guide (tile formula), Anthropic's vision guide (w*h/750).
@pytest.mark.parametrize(
    ("width", "height", "detail", "tokens"),
    [
        (1024, 1024, "high", 765),
        (2048, 4096, "high", 1105),
        (4096, 8192, "low", 85),
        (512, 512, "high", 255),
        (None, None, "high", 1445),
    ],
)
def test_openai_tile_formula(width: int | None, height: int | None, detail: str, tokens: int) -> None:
    assert openai_tokens(width, height, detail) == tokens


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [(200, 200, 54), (1000, 1000, 1334), (1092, 1092, 1590), (4000, 4000, 1600), (None, None, 1600)],
)
def test_anthropic_pixels_over_750(width: int | None, height: int | None, tokens: int) -> None:
    assert anthropic_tokens(width, height) == tokens


def test_the_pre_count_includes_image_tokens() -> None:
    counter = TokenCounter()
    text_only = [Message(role="user", content="look")]
    with_image = [Message(role="user", content=picture(png(1024, 1024), "high")[0]["content"])]
    assert counter.count("openai:gpt-4o", with_image).tokens - counter.count("openai:gpt-4o", text_only).tokens == 765
    part = with_image[0].images[0]
    assert isinstance(part, ImagePart) and image_tokens("anthropic", part) == 1399
    # estimates (non-OpenAI) scale text and images by the safety margin: never below the documented count
    extra = (
        counter.count("anthropic:claude-sonnet-4-5", with_image).tokens
        - counter.count("anthropic:claude-sonnet-4-5", text_only).tokens
    )
    assert extra >= 1399
    # the trimmer's breakdown agrees with the count
    assert counter.breakdown("openai:gpt-4o", with_image).total() == counter.count("openai:gpt-4o", with_image).tokens
