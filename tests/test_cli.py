"""The CLI end to end: make-tiny, generate a real mp4, refuse bad input by field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from srserve.engine.video import read_mp4


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> Path:
    """An SRSERVE_HOME whose embedded tiny pair is the session's: written once, not by every command."""
    home = tmp_path_factory.mktemp("cli-home")
    (home / "tiny").mkdir()
    (home / "tiny" / "wan2.1").symlink_to(tiny_root)
    return home


def _srserve(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"SRSERVE_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "srserve.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_make_tiny_then_generate_writes_a_playable_mp4(tmp_path: Path, home: Path) -> None:
    made = _srserve("make-tiny", str(tmp_path / "pair"), "--loras", str(tmp_path / "loras"), home=home)
    assert made.returncode == 0, made.stderr
    assert "--sketch-lora" in made.stdout
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
        home=home,
    )
    assert run.returncode == 0, run.stderr
    assert "switch step: 4 of 10" in run.stdout
    for stage in ("encode", "sketch", "handoff_serialize", "render", "decode", "export"):
        assert stage in run.stdout
    frames = read_mp4(out)
    assert frames.shape == (9, 32, 48, 3)
    pair = ("--model-pair", "wan2.1", "--sketch-model", str(tmp_path / "pair" / "sketch"))
    pair += ("--render-model", str(tmp_path / "pair" / "render"))
    short = ("--switch", "fixed:1", "--steps", "2", "--frames", "5", "--height", "32", "--width", "32", "--no-progress")
    run = _srserve(
        "generate",
        "--prompt",
        "a fox",
        *pair,
        *short,
        "--sketch-lora",
        f"{tmp_path / 'loras' / 'sketch_lora.safetensors'}:0.5",
        "--render-lora",
        f"{tmp_path / 'loras' / 'render_lora.safetensors'}:0.5",
        "--out",
        str(tmp_path / "lora.mp4"),
        home=home,
    )
    assert run.returncode == 0, run.stderr
    assert "LoRA at scale 0.5 on the sketch and render model" in run.stdout
    # The sketch's adapter does not fit the render model: refused naming it, before any weights load.
    run = _srserve(
        "generate",
        "--prompt",
        "a fox",
        *pair,
        *short,
        "--render-lora",
        str(tmp_path / "loras" / "sketch_lora.safetensors"),
        home=home,
    )
    assert run.returncode == 2 and "adapter 'cli' (render file" in run.stderr, run.stderr


def test_generate_rejects_bad_input_naming_fields(tmp_path: Path, home: Path) -> None:
    run = _srserve("generate", "--prompt", "x", "--frames", "10", "--height", "50", home=home)
    assert run.returncode == 2
    assert "num_frames: must be of the form 4k+1" in run.stderr
    assert "height: must be a multiple of 16" in run.stderr
    run = _srserve("generate", "--prompt", "x", "--model-pair", "wan2.1", home=home)
    assert run.returncode == 2 and "needs --sketch-model PATH and --render-model PATH" in run.stderr


def test_calibrate_mag_then_generate_with_caches(tmp_path: Path, home: Path) -> None:
    ratios = tmp_path / "mag.json"
    made = _srserve("calibrate-mag", "--steps", "8", "--out", str(ratios), home=home)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "cached.mp4"
    common = ("generate", "--prompt", "a fox", "--steps", "8", "--switch", "fixed:3", "--no-progress")
    run = _srserve(*common, "--cache", "sketch=mag:0.3,render=first_block:0.2", "--mag-ratios", str(ratios),
                   "--out", str(out), home=home)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert read_mp4(out).shape[0] == 17
    bad = _srserve(*common, "--cache", "first_block:7", "--out", str(out), home=home)
    assert bad.returncode == 2 and "cache" in bad.stderr
    missing = _srserve(*common, "--cache", "mag", "--out", str(out), home=home)
    assert missing.returncode != 0 and "ratios_file" in missing.stderr


def test_plan_emits_a_config_for_the_profiles_family(tmp_path: Path, home: Path) -> None:
    from srserve.serving.config import DeployFile

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    for family in ("wan2.1", "wan2.2"):
        out = tmp_path / f"{family}.yaml"
        profile = root / f"profile_{family.replace('.', '')}_a100_derived.json"
        args = ["--gpus", "3", "--requests", "100", "--switch", "fixed:0.5", "--top", "1"]
        args += ["--cache-speedup", "sketch=1.5"]
        run = _srserve("plan", "--profile", str(profile), *args, "--emit-config", str(out), home=home)
        assert run.returncode == 0, run.stderr
        assert DeployFile.from_yaml(out).serving.model.family == family
