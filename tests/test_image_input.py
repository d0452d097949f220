"""The input image of an image-to-video request: what load_image accepts and refuses (real files made
with PIL), describe_image, and the request's `input_reference` field."""

from __future__ import annotations

import hashlib
import io
import zlib

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from srserve.engine.inputs.image import ImageInputError, describe_image, load_image
from srserve.engine.request import GenerationRequest, InputImage, RequestDefaults, resolve_request

LIMIT_BYTES = 1 << 20
LIMIT_PIXELS = 1 << 16


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _picture(width: int = 40, height: int = 24, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_accepted_formats_load_as_rgb_and_describe_themselves(fmt: str, media_type: str) -> None:
    data = _encode(_picture(), fmt)
    img = load_image(data, LIMIT_BYTES, LIMIT_PIXELS)
    assert img.mode == "RGB" and img.size == (40, 24)
    ref = describe_image(data)
    assert ref == InputImage(sha256=hashlib.sha256(data).hexdigest(), media_type=media_type, width=40, height=24)


def test_an_alpha_channel_is_dropped() -> None:
    img = load_image(_encode(_picture(mode="RGBA"), "PNG"), LIMIT_BYTES, LIMIT_PIXELS)
    assert img.mode == "RGB"


def test_exif_orientation_is_applied_as_diffusers_does() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 24 wide, 40 high
    data = _encode(_picture(), "JPEG", exif=exif)
    assert load_image(data, LIMIT_BYTES, LIMIT_PIXELS).size == (24, 40)
    ref = describe_image(data)
    assert (ref.width, ref.height) == (24, 40)


def test_not_an_image_is_refused() -> None:
    with pytest.raises(ImageInputError, match="not a PNG, JPEG or WebP image") as info:
        load_image(b"%PDF-1.4 definitely not pixels", LIMIT_BYTES, LIMIT_PIXELS)
    assert info.value.param == "input_reference"
    assert isinstance(info.value, ValueError)
    with pytest.raises(ImageInputError, match="empty"):
        load_image(b"", LIMIT_BYTES, LIMIT_PIXELS)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_refused_by_name(fmt: str) -> None:
    data = _encode(_picture(), fmt)
    with pytest.raises(ImageInputError, match=f"{fmt} images are not accepted"):
        load_image(data, LIMIT_BYTES, LIMIT_PIXELS)
    with pytest.raises(ImageInputError, match="not accepted"):
        describe_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_files_are_refused(fmt: str) -> None:
    data = _encode(_picture(64, 64), fmt)
    with pytest.raises(ImageInputError, match=r"truncated or corrupt|not a PNG"):
        load_image(data[: len(data) * 2 // 3], LIMIT_BYTES, LIMIT_PIXELS)


def test_over_the_byte_limit_is_refused_before_parsing() -> None:
    data = _encode(_picture(), "PNG")
    with pytest.raises(ImageInputError, match=f"{len(data)} bytes, over the limit of 100"):
        load_image(data, 100, LIMIT_PIXELS)


def _png_bomb(side: int) -> bytes:
    """A valid PNG of side x side black pixels: a few KB on disk, side^2 pixels once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1-bit grayscale
    rows = zlib.compress((b"\x00" + bytes((side + 7) // 8)) * side, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    data = _png_bomb(12_000)  # 144 megapixels in a few hundred KB
    assert len(data) < LIMIT_BYTES
    with pytest.raises(ImageInputError, match=r"12000x12000 = 144000000 pixels, over the limit of 65536"):
        load_image(data, LIMIT_BYTES, LIMIT_PIXELS)
    huge = _png_bomb(20_000)  # past PIL's own bomb limit, which refuses it at open: the same error
    with pytest.raises(ImageInputError, match=r"400000000 pixels, over the limit of 65536"):
        load_image(huge, LIMIT_BYTES, LIMIT_PIXELS)


def test_over_the_pixel_limit_is_refused() -> None:
    data = _encode(_picture(300, 300), "PNG")
    with pytest.raises(ImageInputError, match="300x300 = 90000 pixels"):
        load_image(data, LIMIT_BYTES, LIMIT_PIXELS)
    assert load_image(data, LIMIT_BYTES, 90_000).size == (300, 300)


def test_request_carries_the_image_description_not_the_pixels() -> None:
    ref = describe_image(_encode(_picture(), "PNG")).model_copy(update={"key": "inputs/abc.png"})
    request = GenerationRequest(prompt="a fox", input_reference=ref)
    resolved = resolve_request(request, RequestDefaults())
    assert resolved.input_reference == ref
    with pytest.raises(ValidationError, match=r"input_reference\.sha256"):
        GenerationRequest(prompt="a fox", input_reference={**ref.model_dump(), "sha256": "xyz"})
    with pytest.raises(ValidationError, match=r"input_reference\.media_type"):
        GenerationRequest(prompt="a fox", input_reference={**ref.model_dump(), "media_type": "image/gif"})
    with pytest.raises(ValidationError, match=r"input_reference\.pixels"):
        GenerationRequest(prompt="a fox", input_reference={**ref.model_dump(), "pixels": "..."})
