"""Encoding decoded frames to an mp4 (H.264 via the ffmpeg binary bundled in imageio-ffmpeg)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import imageio.v2 as imageio
import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] floats in [0, 1] to uint8, rounding like diffusers' export_to_video."""
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


ENCODE_ATTEMPTS = 3


def encode_mp4(frames: np.ndarray, fps: int = 16, quality: int = 8) -> bytes:
    """Return an mp4 file's bytes for uint8 frames [F, H, W, 3].

    The ffmpeg subprocess can fail transiently on a loaded machine (seen here under heavy CPU
    contention, with an empty stderr); encoding is deterministic, so a failed attempt is retried.
    """
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    for attempt in range(1, ENCODE_ATTEMPTS + 1):
        try:
            return _encode_once(frames, fps, quality)
        except (OSError, RuntimeError):
            if attempt == ENCODE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _encode_once(frames: np.ndarray, fps: int, quality: int) -> bytes:
    fd, tmp = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio.get_writer(
            tmp, fps=fps, codec="libx264", quality=quality, macro_block_size=1, ffmpeg_log_level="error"
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def read_mp4(path: str | Path) -> np.ndarray:
    """All frames of an mp4 as uint8 [F, H, W, 3]."""
    reader = imageio.get_reader(str(path), format="ffmpeg")
    try:
        return np.stack([np.asarray(f) for f in reader])
    finally:
        reader.close()
