"""Prompt tokens of an image, by each provider's documented rule.

* OpenAI (Chat Completions vision, tile formula): ``detail: low`` costs a flat 85 tokens. ``high``
  (and ``auto``, counted as ``high``: the safe side) first fits the image into 2048x2048, then
  scales it down so its shortest side is at most 768 px, and costs 85 + 170 per 512 px tile.
  Documented examples: 1024x1024 high -> 765; 2048x4096 high -> 1105; 4096x8192 low -> 85.
* Anthropic: ``width * height / 750`` after the image is scaled to at most 1568 px on its long edge,
  at most about 1600 tokens. Documented examples: 200x200 -> 54; 1000x1000 -> 1334; 1092x1092 -> 1590.
* Gemini and Bedrock (Claude, Nova, Llama ... behind one API): the larger of the two, as an estimate.
* Ollama and any other provider: the OpenAI rule, as an estimate.

An image whose dimensions are unknown (an https URL: nothing is fetched before the call) costs the
provider's maximum, so the window gate and the budget reservation never undercount.
"""

from __future__ import annotations

import math

from workers.contract import ImagePart

__all__ = ["ANTHROPIC_MAX_TOKENS", "OPENAI_HIGH_MAX_TOKENS", "anthropic_tokens", "image_tokens", "openai_tokens"]

OPENAI_BASE, OPENAI_TILE, OPENAI_LOW = 85, 170, 85
#: The most tiles a high-detail image can have after scaling (768x2048: 2x4 tiles).
OPENAI_HIGH_MAX_TOKENS = OPENAI_BASE + OPENAI_TILE * 8
ANTHROPIC_LONG_EDGE = 1568
ANTHROPIC_MAX_TOKENS = 1600


def openai_tokens(width: int | None, height: int | None, detail: str = "auto") -> int:
    if detail == "low":
        return OPENAI_LOW
    if width is None or height is None:
        return OPENAI_HIGH_MAX_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return OPENAI_BASE + OPENAI_TILE * tiles


def anthropic_tokens(width: int | None, height: int | None) -> int:
    if width is None or height is None:
        return ANTHROPIC_MAX_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > ANTHROPIC_LONG_EDGE:
        scale = ANTHROPIC_LONG_EDGE / max(w, h)
        w, h = w * scale, h * scale
    return min(ANTHROPIC_MAX_TOKENS, math.ceil(w * h / 750))


def image_tokens(provider: str, part: ImagePart) -> int:
    """The prompt tokens ``provider`` charges for one image part."""
    info = part.image_url.info
    if provider == "anthropic":
        return anthropic_tokens(info.width, info.height)
    if provider in ("gemini", "bedrock"):  # other rules (or other models): the larger of the two
        return max(anthropic_tokens(info.width, info.height), openai_tokens(info.width, info.height, "high"))
    return openai_tokens(info.width, info.height, part.image_url.detail)
