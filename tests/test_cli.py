"""The CLI end to end: make-tiny, generate a real mp4, refuse bad input by field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from srserve.engine.video import read_mp4


def _srserve(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"SRSERVE_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "srserve.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_make_tiny_then_generate_writes_a_playable_mp4(tmp_path: Path) -> None:
    made = _srserve("make-tiny", str(tmp_path / "pair"), home=tmp_path)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "fox.mp4"
    run = _srserve(
        "generate",
        "--prompt",
        "a fox",
        "--model-pair",
        "wan2.1",
        "--sketch-model",
        str(tmp_path / "pair" / "sketch"),
        "--render-model",
        str(tmp_path / "pair" / "render"),
        "--switch",
        "fixed:4",
        "--steps",
        "10",
        "--frames",
        "9",
        "--height",
        "32",
        "--width",
        "48",
        "--out",
        str(out),
        home=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "switch step: 4 of 10" in run.stdout
    for stage in ("encode", "sketch", "handoff_serialize", "render", "decode", "export"):
        assert stage in run.stdout
    frames = read_mp4(out)
    assert frames.shape == (9, 32, 48, 3)


def test_generate_rejects_bad_input_naming_fields(tmp_path: Path) -> None:
    run = _srserve("generate", "--prompt", "x", "--frames", "10", "--height", "50", home=tmp_path)
    assert run.returncode == 2
    assert "num_frames: must be of the form 4k+1" in run.stderr
    assert "height: must be a multiple of 16" in run.stderr
    run = _srserve("generate", "--prompt", "x", "--model-pair", "wan2.1", home=tmp_path)
    assert run.returncode == 2 and "needs --sketch-model PATH and --render-model PATH" in run.stderr
