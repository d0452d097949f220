"""The image-to-video pair check (no weights load): each misfit refused at config load, naming the field;
the tiny folders shaped like the real checkpoints; the CLI's make-tiny and generate with --image; step
caches, adaptive switches and parallel degrees for the I2V families."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from srserve.cli.main import main as cli_main
from srserve.engine import ModelPairConfig
from srserve.engine.families import IncompatiblePairError, check_pair, takes_image
from srserve.engine.parallel.config import ParallelSpec, ParallelUnsupported, check_parallel
from srserve.engine.tiny import (
    write_tiny_wan21_i2v_pair,
    write_tiny_wan22_i2v_pair,
    write_tiny_wan22_pair,
    write_tiny_wan_pair,
)
from srserve.planner.profile import Profile

ROOT = Path(__file__).resolve().parents[1]


def _configs_only(src: Path, dst: Path) -> Path:
    """A copy of a Diffusers folder without its weights: all the pair check reads."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dst


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Every tiny Wan folder once, as (sketch, render) paths."""
    root = tmp_path_factory.mktemp("i2v-pairs")
    return {
        "wan2.1": write_tiny_wan_pair(root / "t2v"),
        "wan2.2": write_tiny_wan22_pair(root / "t2v22"),
        "wan2.1-i2v": write_tiny_wan21_i2v_pair(root / "i2v"),
        "wan2.2-i2v": write_tiny_wan22_i2v_pair(root / "i2v22"),
    }


@pytest.fixture
def folders(written, tmp_path: Path) -> Callable[[str], tuple[Path, Path]]:
    """A family's (sketch, render) as config-only copies a test may edit."""

    copies = itertools.count()

    def copy(family: str) -> tuple[Path, Path]:
        sketch, render = written[family]
        base = tmp_path / f"{family}-{next(copies)}"
        if family in ("wan2.2", "wan2.2-i2v"):  # one folder; the render is its transformer_2
            folder = _configs_only(sketch, base / sketch.name)
            return folder, folder / "transformer_2"
        return _configs_only(sketch, base / "sketch"), _configs_only(render, base / "render")

    return copy


def _edit(path: Path, **changes: object) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _pair(family: str, sketch: Path, render: Path, **fields: object) -> ModelPairConfig:
    return ModelPairConfig(family=family, sketch_path=str(sketch), render_path=str(render), **fields)


# -- the tiny folders --------------------------------------------------------------------------------


def test_tiny_folders_are_shaped_like_the_checkpoints(written) -> None:
    sketch, render = written["wan2.1-i2v"]
    big, small = (json.loads((p / "transformer" / "config.json").read_text()) for p in (sketch, render))
    for cfg in (big, small):
        assert cfg["in_channels"] == 36 and cfg["out_channels"] == 16
        assert cfg["image_dim"] == 32
        assert cfg["added_kv_proj_dim"] == cfg["num_attention_heads"] * cfg["attention_head_dim"]
    index = json.loads((sketch / "model_index.json").read_text())
    assert index["image_encoder"] == ["transformers", "CLIPVisionModel"]
    assert index["boundary_ratio"] is None
    a14b, low = written["wan2.2-i2v"]
    index = json.loads((a14b / "model_index.json").read_text())
    assert index["boundary_ratio"] == 0.9 and index["image_encoder"] == [None, None]
    for sub in ("transformer", "transformer_2"):
        cfg = json.loads((a14b / sub / "config.json").read_text())
        assert cfg["in_channels"] == 36 and cfg["image_dim"] is None and cfg["added_kv_proj_dim"] is None
    assert low == a14b / "transformer_2"
    assert takes_image("wan2.1-i2v") and takes_image("wan2.2-i2v") and not takes_image("wan2.1")


def test_the_tiny_pairs_pass_the_check(written) -> None:
    for family in ("wan2.1-i2v", "wan2.2-i2v"):
        check_pair(_pair(family, *written[family]))


# -- refusals, each naming its field ------------------------------------------------------------------


def test_in_channels_a_t2v_render_model(folders) -> None:
    sketch, _ = folders("wan2.1-i2v")
    _, t2v_render = folders("wan2.1")
    with pytest.raises(IncompatiblePairError, match="in_channels"):
        check_pair(_pair("wan2.1-i2v", sketch, t2v_render))


def test_in_channels_a_t2v_pair_as_i2v_and_back(folders) -> None:
    sketch, render = folders("wan2.1")
    with pytest.raises(IncompatiblePairError, match=r"in_channels 16 != 36, what an image-to-video model takes"):
        check_pair(_pair("wan2.1-i2v", sketch, render))
    i2v_sketch, i2v_render = folders("wan2.1-i2v")
    with pytest.raises(IncompatiblePairError, match=r"VAE z_dim 16 != transformer in_channels 36"):
        check_pair(_pair("wan2.1", i2v_sketch, i2v_render))
    a14b, low = folders("wan2.2-i2v")
    with pytest.raises(IncompatiblePairError, match=r"VAE z_dim 16 != transformer in_channels 36"):
        check_pair(_pair("wan2.2", a14b, low))
    t2v_a14b, t2v_low = folders("wan2.2")
    with pytest.raises(IncompatiblePairError, match=r"in_channels 16 != 36"):
        check_pair(_pair("wan2.2-i2v", t2v_a14b, t2v_low))


def test_image_dim_render_reads_other_embeddings(folders) -> None:
    sketch, render = folders("wan2.1-i2v")
    _edit(render / "transformer" / "config.json", image_dim=64)
    with pytest.raises(
        IncompatiblePairError, match=r"image_dim \(image embedding width\): render takes 64, the sketch"
    ):
        check_pair(_pair("wan2.1-i2v", sketch, render))


def test_image_dim_render_without_image_attention_is_accepted(folders) -> None:
    """A render model with no image cross-attention (image_dim None) simply gets no embeddings."""
    sketch, render = folders("wan2.1-i2v")
    _edit(render / "transformer" / "config.json", image_dim=None, added_kv_proj_dim=None)
    check_pair(_pair("wan2.1-i2v", sketch, render))


def test_image_dim_expert_that_wants_embeddings_nobody_makes(folders) -> None:
    a14b, low = folders("wan2.2-i2v")
    _edit(low / "config.json", image_dim=32, added_kv_proj_dim=384)
    with pytest.raises(
        IncompatiblePairError, match=r"image_dim \(image embedding width\): render takes 32, the sketch makes none"
    ):
        check_pair(_pair("wan2.2-i2v", a14b, low))


def test_image_dim_image_encoder_width_and_presence(folders) -> None:
    sketch, render = folders("wan2.1-i2v")
    _edit(sketch / "image_encoder" / "config.json", hidden_size=48)
    with pytest.raises(
        IncompatiblePairError, match="image_dim: the image encoder's width is 48, the transformers take 32"
    ):
        check_pair(_pair("wan2.1-i2v", sketch, render))
    shutil.rmtree(sketch / "image_encoder")
    with pytest.raises(IncompatiblePairError, match="has no image_encoder/ and image_processor/"):
        check_pair(_pair("wan2.1-i2v", sketch, render))


def test_image_dim_text_length_is_fixed_with_image_attention(folders) -> None:
    sketch, render = folders("wan2.1-i2v")
    with pytest.raises(IncompatiblePairError, match="max_sequence_length 256: a model with image cross-attention"):
        check_pair(_pair("wan2.1-i2v", sketch, render, max_sequence_length=256))


def test_text_dim(folders) -> None:
    sketch, render = folders("wan2.1-i2v")
    _edit(render / "transformer" / "config.json", text_dim=32)
    with pytest.raises(IncompatiblePairError, match="text_dim"):
        check_pair(_pair("wan2.1-i2v", sketch, render))
    a14b, low = folders("wan2.2-i2v")
    _edit(low / "config.json", text_dim=32)
    with pytest.raises(IncompatiblePairError, match="transformer text_dim: sketch has 64, render has 32"):
        check_pair(_pair("wan2.2-i2v", a14b, low))


def test_vae(folders) -> None:
    sketch, render = folders("wan2.1-i2v")
    _edit(render / "vae" / "config.json", latents_std=[2.0] * 16)
    with pytest.raises(IncompatiblePairError, match="VAE mismatch on 'latents_std'"):
        check_pair(_pair("wan2.1-i2v", sketch, render))
    a14b, low = folders("wan2.2-i2v")
    with pytest.raises(IncompatiblePairError, match="VAE latents_std"):
        check_pair(_pair("wan2.2-i2v", a14b, low, vae_path=str(render)))


def test_scheduler(folders) -> None:
    sketch, render = folders("wan2.1-i2v")
    _edit(render / "scheduler" / "scheduler_config.json", flow_shift=5.0)
    with pytest.raises(IncompatiblePairError, match="scheduler mismatch on 'flow_shift'"):
        check_pair(_pair("wan2.1-i2v", sketch, render))
    a14b, _ = folders("wan2.2-i2v")
    i2v_sketch, _ = folders("wan2.1-i2v")  # flow_shift 3.0 against the A14B's 5.0
    with pytest.raises(IncompatiblePairError, match=r"scheduler flow_shift: sketch has 5\.0, render has 3\.0"):
        check_pair(_pair("wan2.2-i2v", a14b, i2v_sketch / "transformer"))


def test_a_wan22_folder_is_not_wan21_i2v_and_guidance_scale_2_is_wan22s(folders) -> None:
    a14b, low = folders("wan2.2-i2v")
    sketch, render = folders("wan2.1-i2v")
    with pytest.raises(IncompatiblePairError, match=r"use family wan2\.2-i2v"):
        check_pair(_pair("wan2.1-i2v", a14b, render))
    with pytest.raises(ValidationError, match=r"guidance_scale_2 applies to family wan2\.2 or wan2\.2-i2v"):
        _pair("wan2.1-i2v", sketch, render, guidance_scale_2=3.0)
    _pair("wan2.2-i2v", a14b, low, guidance_scale_2=3.0)


# -- parallel degrees ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["wan2.1-i2v", "wan2.2-i2v"])
def test_parallel_degrees_are_refused_naming_why(family: str) -> None:
    import torch

    for spec in (ParallelSpec(ulysses=2), ParallelSpec(cfg=2), ParallelSpec(ring=2)):
        with pytest.raises(ParallelUnsupported, match=f"family '{family}' runs on one device per replica"):
            check_parallel(spec, family, "native", torch.device("cpu"))
    check_parallel(ParallelSpec(), family, "native", torch.device("cpu"))


# -- the CLI ------------------------------------------------------------------------------------------


def test_cli_make_tiny_then_generate_from_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["make-tiny", "--family", "wan2.2-i2v", str(tmp_path / "a14b")]) == 0
    assert "--image IMAGE.png" in capsys.readouterr().out
    image = tmp_path / "in.png"
    pixels = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    image.write_bytes(buf.getvalue())
    folder = str(tmp_path / "a14b" / "Wan2.2-I2V-A14B")
    pair = ["--model-pair", "wan2.2-i2v", "--sketch-model", folder, "--render-model", folder]
    common = ["--prompt", "a fox", "--steps", "2", "--height", "32", "--width", "32", "--frames", "5", "--no-progress"]
    out = tmp_path / "v.mp4"
    assert cli_main(["generate", *pair, "--image", str(image), "--out", str(out), *common]) == 0
    assert out.stat().st_size > 0 and "switch step: 1 of 2" in capsys.readouterr().out  # the A14B boundary, 0.9
    assert cli_main(["generate", *pair, *common]) == 2
    assert "input_reference: the wan2.2-i2v pair generates from an image" in capsys.readouterr().err
    gif = tmp_path / "in.gif"
    Image.fromarray(pixels).save(gif, format="GIF")
    assert cli_main(["generate", *pair, "--image", str(gif), *common]) == 2
    assert "GIF images are not accepted" in capsys.readouterr().err
    assert cli_main(["generate", "--model-pair", "tiny", "--image", str(image), *common]) == 2
    assert "input_reference: the wan2.1 pair is text-to-video" in capsys.readouterr().err


# -- the planner's derived profiles -------------------------------------------------------------------


def test_derived_i2v_profiles_reproduce_the_published_figure() -> None:
    """The committed profiles are what the script derives, and the large-only run adds up to 366 s on an H200."""
    spec = importlib.util.spec_from_file_location("derive_i2v_profiles", ROOT / "benchmarks" / "derive_i2v_profiles.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    derived = script.derive(Profile.read(script.WAN21_PROFILE))
    for profile in derived:
        name = profile.model_pair.replace(".", "").replace("-", "_")
        committed = Profile.read(ROOT / "benchmarks" / "results" / f"profile_{name}_h200_derived.json")
        assert committed == profile and committed.source == "derived"
        assert committed.description.startswith("DERIVED, not measured")
        c = committed.kinds["H200"].shapes["832x480x81"]
        total = c.encode_s + c.sketch_overhead_s + 40 * c.large_step_s + c.decode_s
        assert total == pytest.approx(366.0)
    wan21, wan22 = derived
    assert wan21.model_pair == "wan2.1-i2v" and wan21.kinds["H200"].shapes["832x480x81"].small_step_s < 2.0
    costs = wan22.kinds["H200"].shapes["832x480x81"]
    assert costs.small_step_s == costs.large_step_s and 0 < costs.detail["boundary_switch_step"] < 40
    assert wan22.fits("H200", ("large", "text_encoder")) and wan22.fits("H200", ("small", "vae"))


@pytest.mark.parametrize(("family", "switch"), [("wan2.1-i2v", "fixed:10"), ("wan2.2-i2v", "fixed:15")])
def test_plan_emits_a_config_for_an_i2v_profile(tmp_path: Path, family: str, switch: str) -> None:
    from srserve.serving.config import DeployFile

    name = family.replace(".", "").replace("-", "_")
    profile = ROOT / "benchmarks" / "results" / f"profile_{name}_h200_derived.json"
    out = tmp_path / "serve.yaml"
    args = ["--gpus", "3", "--requests", "60", "--switch", switch, "--top", "1", "--emit-config", str(out)]
    assert cli_main(["plan", "--profile", str(profile), *args]) == 0
    model = DeployFile.from_yaml(out).serving.model
    assert model.family == family and "I2V" in model.sketch_path
