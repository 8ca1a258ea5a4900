"""Image content parts: data-URL parsing, size caps and pixel dimensions (stdlib only).

An image travels in a job as OpenAI's ``image_url`` part: a ``data:image/...;base64,...`` URL or an
``https://`` URL. Data URLs are measured here without decoding the whole payload: the byte size
follows from the base64 length, and the width and height are read from the file header (PNG,
JPEG, GIF, WebP). The token pre-count needs those dimensions (each provider's rule is a function
of width and height); an https image has unknown dimensions and is counted at the provider's
worst case.
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_SIDE",
    "ImageInfo",
    "image_info",
]

#: The largest image any provider takes (OpenAI: 20 MB per image); per-provider caps are lower.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: The longest side any provider takes (Anthropic rejects images over 8000 px on a side).
MAX_IMAGE_SIDE = 8000
IMAGE_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,", re.IGNORECASE)
#: Enough of the file to find the dimensions; JPEG's SOF may follow a large EXIF block.
_HEADER_B64 = 256 * 1024


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the contract knows about one image part (width/height None: not known)."""

    kind: str  # "data" or "url"
    media_type: str | None
    size_bytes: int | None
    width: int | None
    height: int | None
    #: The base64 payload of a data URL (what Anthropic and Ollama want); None for https URLs.
    data: str | None = None


def image_info(url: str) -> ImageInfo:
    """Parse and measure an image URL; raises ``ValueError`` with a clear message if unusable."""
    if url.startswith(("https://", "http://")):
        if len(url) > 8192:
            raise ValueError("an image URL must be at most 8192 characters")
        return ImageInfo("url", None, None, None, None)
    return _data_info(url)


@lru_cache(maxsize=64)
def _data_info(url: str) -> ImageInfo:
    match = _DATA_URL.match(url)
    if match is None:
        raise ValueError("an image must be an https:// URL or a data:image/<type>;base64,... URL")
    media_type = match.group(1).lower()
    if media_type not in IMAGE_MEDIA_TYPES:
        raise ValueError(f"image type {media_type!r} is not supported (png, jpeg, gif, webp)")
    payload = url[match.end() :]
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"the image is {size} bytes; the limit is {MAX_IMAGE_BYTES} bytes")
    head = payload[:_HEADER_B64]
    try:
        raw = binascii.a2b_base64(head[: len(head) - len(head) % 4], strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"the image's base64 data is invalid: {exc}") from None
    dims = _dimensions(raw)
    if dims is None:
        raise ValueError(f"the image data is not a readable {media_type} file")
    width, height = dims
    if width <= 0 or height <= 0:
        raise ValueError("the image has no pixels")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ValueError(f"the image is {width}x{height} px; the limit is {MAX_IMAGE_SIDE} px on a side")
    return ImageInfo("data", media_type, size, width, height, payload)


def _dimensions(raw: bytes) -> tuple[int, int] | None:
    if raw.startswith(b"\x89PNG\r\n\x1a\n") and len(raw) >= 24:
        w, h = struct.unpack(">II", raw[16:24])
        return int(w), int(h)
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        w, h = struct.unpack("<HH", raw[6:10])
        return int(w), int(h)
    if raw.startswith(b"RIFF") and raw[8:12] == b"WEBP":
        return _webp(raw)
    if raw.startswith(b"\xff\xd8"):
        return _jpeg(raw)
    return None


def _webp(raw: bytes) -> tuple[int, int] | None:
    chunk = raw[12:16]
    if chunk == b"VP8X" and len(raw) >= 30:
        w = int.from_bytes(raw[24:27], "little") + 1
        h = int.from_bytes(raw[27:30], "little") + 1
        return w, h
    if chunk == b"VP8 " and len(raw) >= 30:
        w, h = struct.unpack("<HH", raw[26:30])
        return int(w) & 0x3FFF, int(h) & 0x3FFF
    if chunk == b"VP8L" and len(raw) >= 25:
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg(raw: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(raw):
        if raw[i] != 0xFF:
            i += 1
            continue
        marker = raw[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", raw[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", raw[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None
