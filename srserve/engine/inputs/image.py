"""The input image of an image-to-video request: bytes from a client, checked before they are decoded.

Only PNG, JPEG and WebP are read. The pixel count is checked from the header, before any pixel is
decoded, so a small file that inflates to gigapixels (a decompression bomb) is refused cheaply; a
truncated file is refused rather than padded. Every refusal is an `ImageInputError` whose `param`
names the request field (`input_reference`, or `reference_images[i]` for a video-editing request's
reference image), for the API's error body.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from srserve.engine.request import InputImage, MediaType

# PIL format name -> media type: the formats srserve accepts.
MEDIA_TYPES: dict[str, MediaType] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_ORIENTATION_TAG = 0x0112
_SWAPPED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF rotations by 90 or 270 degrees


class ImageInputError(ValueError):
    """The input image cannot be used; the message says why and `param` names the field."""

    def __init__(self, message: str, param: str = "input_reference") -> None:
        super().__init__(message)
        self.param = param


def _open(data: bytes, max_pixels: int | None = None, param: str = "input_reference") -> Image.Image:
    """The image's header (no pixels decoded yet), or ImageInputError naming what the bytes are."""
    if not isinstance(data, bytes | bytearray | memoryview) or not len(data):
        raise ImageInputError(f"{param}: the image is empty", param)
    try:
        with warnings.catch_warnings():  # our own pixel limit decides, not PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(bytes(data)), formats=list(MEDIA_TYPES))
    except Image.DecompressionBombError as exc:  # PIL's own last-resort limit, far above any sane one
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = found.group(1) if found else "too many"
        limit = "" if max_pixels is None else f", over the limit of {max_pixels}"
        raise ImageInputError(f"{param}: the image has {count} pixels{limit}", param) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    other = _other_format(data)
    if other is not None:
        raise ImageInputError(f"{param}: {other} images are not accepted; send PNG, JPEG or WebP", param)
    raise ImageInputError(f"{param}: not a PNG, JPEG or WebP image", param)


def _other_format(data: bytes) -> str | None:
    """The name of a format PIL knows but srserve does not accept (GIF, BMP, TIFF ...), if the bytes are one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(bytes(data))) as img:
                return str(img.format)
    except Exception:  # anything PIL cannot identify is simply not an image
        return None


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, after the EXIF orientation a camera recorded (read from the header)."""
    width, height = img.size
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a broken EXIF block: the stored orientation
        orientation = None
    return (height, width) if orientation in _SWAPPED_ORIENTATIONS else (width, height)


def load_image(data: bytes, max_bytes: int, max_pixels: int, param: str = "input_reference") -> Image.Image:
    """Decode a PNG, JPEG or WebP image to RGB, as diffusers' `load_image` does (EXIF orientation applied).

    Refuses (ImageInputError) more than `max_bytes` bytes, anything else than the three formats, more
    than `max_pixels` pixels (checked from the header, before decoding), and truncated or corrupt files.
    An animated image gives its first frame.
    """
    if len(data) > max_bytes:
        raise ImageInputError(f"{param}: the image is {len(data)} bytes, over the limit of {max_bytes}", param)
    img = _open(data, max_pixels, param)
    width, height = img.size
    if width * height > max_pixels:
        raise ImageInputError(
            f"{param}: the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}", param
        )
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation and corruption as these
        raise ImageInputError(f"{param}: the {img.format} image is truncated or corrupt ({exc})", param) from exc
    img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def describe_image(data: bytes, param: str = "input_reference") -> InputImage:
    """A request's description of an image (sha256, media type, size as shown), from its header only."""
    img = _open(data, param=param)
    width, height = _oriented_size(img)
    return InputImage(
        sha256=hashlib.sha256(bytes(data)).hexdigest(),
        media_type=MEDIA_TYPES[str(img.format)],
        width=width,
        height=height,
    )
