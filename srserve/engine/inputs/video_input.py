"""An input video of a video-editing request (the video or its mask): mp4 bytes from a client, decoded to frames.

Decoded with the ffmpeg that imageio-ffmpeg bundles, the stack srserve already writes its mp4s with.
Only mp4 is read (an ISO base media file: `ftyp` at byte 4). The frame size is checked from the
stream's metadata before any frame is decoded, and decoding stops one frame past the limit, so a
small file that inflates to many or huge frames is refused cheaply. Every refusal is a
`VideoInputError` whose `param` names the request field (`video` or `mask`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import imageio.v2 as imageio
from PIL import Image

from srserve.engine.request import InputVideo


class VideoInputError(ValueError):
    """The input video cannot be used; the message (and `param`) names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@contextmanager
def _reader(data: bytes, param: str) -> Iterator[Any]:
    """An ffmpeg reader over the bytes (ffmpeg reads files, so they go to a temporary one first)."""
    fd, tmp = tempfile.mkstemp(suffix=".mp4")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(data))
        try:
            reader = imageio.get_reader(tmp, format="ffmpeg")
        except (OSError, RuntimeError, ValueError) as exc:
            raise VideoInputError(param, f"the mp4 cannot be read ({str(exc).splitlines()[0]})") from exc
        try:
            yield reader
        finally:
            reader.close()
    finally:
        os.unlink(tmp)


def load_video(data: bytes, param: str, *, max_bytes: int, max_frames: int, max_pixels: int) -> list[Image.Image]:
    """Decode an mp4 to its frames as RGB images (what diffusers' WanVACEPipeline takes as a video or mask).

    Refuses (VideoInputError naming `param`) more than `max_bytes` bytes, anything but mp4, frames of more than
    `max_pixels` pixels (from the metadata, before decoding), more than `max_frames` frames, and a file with none.
    """
    if not isinstance(data, bytes | bytearray | memoryview) or not len(data):
        raise VideoInputError(param, "the video is empty")
    if len(data) > max_bytes:
        raise VideoInputError(param, f"the video is {len(data)} bytes, over the limit of {max_bytes}")
    if bytes(data[4:8]) != b"ftyp":
        raise VideoInputError(param, "not an mp4 video")
    frames: list[Image.Image] = []
    with _reader(data, param) as reader:
        width, height = reader.get_meta_data().get("size", (0, 0))
        if width * height > max_pixels:
            raise VideoInputError(
                param,
                f"the video is {width}x{height} = {width * height} pixels a frame, over the limit of {max_pixels}",
            )
        try:
            for frame in reader:
                if len(frames) == max_frames:
                    raise VideoInputError(param, f"the video has more than {max_frames} frames")
                frames.append(Image.fromarray(frame).convert("RGB"))
        except (OSError, RuntimeError) as exc:
            raise VideoInputError(param, f"the mp4 is truncated or corrupt ({str(exc).splitlines()[0]})") from exc
    if not frames:
        raise VideoInputError(param, "the video has no frames")
    return frames


def describe_video(data: bytes, frames: list[Image.Image]) -> InputVideo:
    """A request's description of a decoded video (sha256 of its bytes, frame size and count)."""
    width, height = frames[0].size
    return InputVideo(
        sha256=hashlib.sha256(bytes(data)).hexdigest(), width=width, height=height, num_frames=len(frames)
    )
