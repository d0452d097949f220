"""The CLI's video editing end to end: make-tiny --family wan2.1-vace, generate with a video, mask and reference
image, or with an image as the first frame, into a real mp4 (by folders and by the embedded pair's name), and
refusals naming the field."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srserve.engine.tiny import TINY_LAYOUTS
from srserve.engine.video import encode_mp4, read_mp4

FRAMES, HEIGHT, WIDTH = 5, 32, 48


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VACE folders, written once by `srserve make-tiny` (its own test)."""
    root = tmp_path_factory.mktemp("vace-pair")
    made = _srserve("make-tiny", "--family", "wan2.1-vace", str(root), home=root)
    assert made.returncode == 0, made.stderr
    assert "--video VIDEO.mp4" in made.stdout
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, pair: Path, tiny_root: Path) -> Path:
    """An SRSERVE_HOME whose embedded tiny-wan2.1-vace pair is the one make-tiny wrote, and whose tiny Wan2.1
    pair is the session's (neither written again)."""
    home = tmp_path_factory.mktemp("vace-home")
    (home / "tiny").mkdir()
    (home / "tiny" / "wan2.1-vace").symlink_to(pair)
    (home / "tiny" / "wan2.1").symlink_to(tiny_root)
    return home


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vace-inputs")
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    video = np.stack([np.stack([x * 5 + 9 * f, y * 7, x + y], axis=-1) % 256 for f in range(FRAMES)]).astype(np.uint8)
    mask = np.zeros_like(video)
    mask[:, 8:24, 16:40] = 255
    short = video[:3]
    files = {"video": encode_mp4(video), "mask": encode_mp4(mask), "short": encode_mp4(short)}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.mp4"
        paths[name].write_bytes(data)
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 24, 3), 200, np.uint8)).save(buf, format="PNG")
    paths["reference"] = folder / "reference.png"
    paths["reference"].write_bytes(buf.getvalue())
    return paths


def _srserve(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"SRSERVE_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "srserve.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


SHORT = ("--switch", "fixed:1", "--steps", "2", "--no-progress")


def test_make_tiny_then_generate_edits_a_video(tmp_path: Path, pair: Path, home: Path, inputs) -> None:
    sketch, render = TINY_LAYOUTS["wan2.1-vace"].folders(pair)
    out = tmp_path / "edited.mp4"
    run = _srserve(
        "generate",
        "--prompt",
        "a fox",
        "--model-pair",
        "wan2.1-vace",
        "--sketch-model",
        str(sketch),
        "--render-model",
        str(render),
        "--video",
        str(inputs["video"]),
        "--mask",
        str(inputs["mask"]),
        "--reference-image",
        str(inputs["reference"]),
        "--conditioning-scale",
        "0.7",
        *SHORT,
        "--out",
        str(out),
        home=home,
    )
    assert run.returncode == 0, run.stderr
    assert "switch step: 1 of 2" in run.stdout
    assert read_mp4(out).shape == (FRAMES, HEIGHT, WIDTH, 3)  # the video's frame count and size


def test_embedded_pair_by_name_with_reference_images_only(tmp_path: Path, home: Path, inputs) -> None:
    out = tmp_path / "refs.mp4"
    reference = str(inputs["reference"])
    run = _srserve(
        "generate",
        "--prompt",
        "a fox",
        "--model-pair",
        "tiny-wan2.1-vace",
        "--reference-image",
        reference,
        "--reference-image",
        reference,
        "--frames",
        "5",
        "--height",
        "32",
        "--width",
        "32",
        *SHORT,
        "--out",
        str(out),
        home=home,
    )
    assert run.returncode == 0, run.stderr
    assert read_mp4(out).shape == (5, 32, 32, 3)  # the reference frames are not in the output


# Each command starts a process (seconds of imports): the request's other refusals are unit-tested
# (tests/test_vace_parity.py); these check the CLI reports them by field, before any weights load.
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--video", "video", "--mask", "short"), "mask: 3 frames of 48x32, the video has 5 frames of 48x32"),
        (("--video", "reference"), "video: not an mp4 video"),
    ],
)
def test_generate_refuses_bad_editing_inputs(home: Path, inputs, flags: tuple[str, ...], needle: str) -> None:
    args = [str(inputs[a]) if a in inputs else a for a in flags]
    run = _srserve("generate", "--prompt", "a fox", "--model-pair", "tiny-wan2.1-vace", *args, *SHORT, home=home)
    assert run.returncode == 2 and needle in run.stderr, run.stderr


def test_embedded_pair_with_an_image_as_first_frame(tmp_path: Path, home: Path, inputs) -> None:
    """--image on a VACE pair: the first frame to keep, resized to the output's size (here 40x24 to 48x32)."""
    out = tmp_path / "first-frame.mp4"
    size = ("--frames", str(FRAMES), "--height", str(HEIGHT), "--width", str(WIDTH))
    args = ("--model-pair", "tiny-wan2.1-vace", "--image", str(inputs["reference"]), *size, *SHORT)
    run = _srserve("generate", "--prompt", "a fox", *args, "--out", str(out), home=home)
    assert run.returncode == 0, run.stderr
    assert read_mp4(out).shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_image_with_a_video_is_refused(home: Path, inputs) -> None:
    args = ("--model-pair", "tiny-wan2.1-vace", "--image", str(inputs["reference"]), "--video", str(inputs["video"]))
    run = _srserve("generate", "--prompt", "a fox", *args, *SHORT, home=home)
    assert run.returncode == 2 and "input_reference: on the wan2.1-vace pair" in run.stderr, run.stderr


def test_text_to_video_pair_refuses_a_video(home: Path, inputs) -> None:
    args = ("--model-pair", "tiny", "--video", str(inputs["video"]), *SHORT)
    run = _srserve("generate", "--prompt", "a fox", *args, home=home)
    assert run.returncode == 2 and "video: the wan2.1 pair does not edit video" in run.stderr, run.stderr
