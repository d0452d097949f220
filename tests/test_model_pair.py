"""Loading a pair: compatibility checks before any weights load, shared components loaded once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from srserve.engine import GenerationRequest, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.engine import MissingRoleError
from srserve.engine.families import IncompatiblePairError, check_pair, get_family
from srserve.engine.models import components


def _copy_with(tiny_root: Path, tmp_path: Path, component: str, **changes) -> ModelPairConfig:
    render = tmp_path / "render"
    shutil.copytree(tiny_root / "render", render)
    cfg_file = render / component / ("scheduler_config.json" if component == "scheduler" else "config.json")
    cfg = json.loads(cfg_file.read_text())
    cfg.update(changes)
    cfg_file.write_text(json.dumps(cfg))
    return ModelPairConfig(sketch_path=str(tiny_root / "sketch"), render_path=str(render), device="cpu")


@pytest.mark.parametrize(
    ("component", "changes", "message"),
    [
        ("transformer", {"in_channels": 32}, "transformer mismatch on 'in_channels'"),
        ("transformer", {"patch_size": [1, 4, 4]}, "transformer mismatch on 'patch_size'"),
        ("transformer", {"text_dim": 128}, "transformer mismatch on 'text_dim'"),
        ("vae", {"z_dim": 48}, "VAE z_dim 48"),
        ("vae", {"latents_std": [1.0] * 16}, "VAE mismatch on 'latents_std'"),
        ("scheduler", {"flow_shift": 5.0}, "scheduler mismatch on 'flow_shift'"),
    ],
)
def test_incompatible_pair_is_refused_by_name(tiny_root, tmp_path, component, changes, message) -> None:
    config = _copy_with(tiny_root, tmp_path, component, **changes)
    with pytest.raises(IncompatiblePairError, match=message):
        SRDiffusionEngine(config)


def test_missing_folder_and_unknown_family(tmp_path) -> None:
    with pytest.raises(IncompatiblePairError, match="does not exist"):
        SRDiffusionEngine(ModelPairConfig(sketch_path=str(tmp_path / "nope"), render_path=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown model family 'sora'"):
        get_family("sora")


def test_text_encoder_and_vae_load_once_per_process(tiny_config) -> None:
    components.clear()
    a = SRDiffusionEngine(tiny_config, roles={Role.TEXT, Role.SKETCH})
    b = SRDiffusionEngine(tiny_config, roles={Role.TEXT, Role.RENDER, Role.DECODE})
    c = SRDiffusionEngine(tiny_config)
    assert a.text_encoder is b.text_encoder is c.text_encoder
    assert b.vae is c.vae and a.vae is None
    assert a.sketch_model is c.sketch_model and a.render_model is None
    kinds = [key[0] for key in components.loaded_keys()]
    assert sorted(kinds) == ["text_encoder", "transformer[native]", "transformer[native]", "vae"]


def test_engine_refuses_stages_it_did_not_load(tiny_config) -> None:
    renderer = SRDiffusionEngine(tiny_config, roles={Role.RENDER})
    with pytest.raises(MissingRoleError, match="'text' role"):
        renderer.encode(renderer.resolve(GenerationRequest(prompt="x")))


def test_check_pair_is_the_engines_check(tiny_root, tmp_path) -> None:
    """check_pair runs the family's check without loading anything (what serving calls at config load)."""
    config = _copy_with(tiny_root, tmp_path, "transformer", in_channels=48)
    with pytest.raises(IncompatiblePairError, match="transformer mismatch on 'in_channels'"):
        check_pair(config)
    check_pair(ModelPairConfig.tiny(tiny_root, write=False))


def test_tiny_pairs_by_name(tmp_path) -> None:
    pair = ModelPairConfig.tiny_pair("tiny-wan2.2", root=tmp_path / "wan22")
    assert (pair.family, pair.name) == ("wan2.2", "tiny-wan2.2")
    assert pair.render_path == str(Path(pair.sketch_path) / "transformer_2")
    check_pair(pair)
    with pytest.raises(ValueError, match="unknown tiny pair 'tiny-sora'"):
        ModelPairConfig.tiny_pair("tiny-sora")


@pytest.mark.parametrize(
    ("name", "family", "sketch", "render", "frames"),
    [
        ("tiny", "wan2.1", "sketch", "render", 17),
        ("tiny-wan2.1", "wan2.1", "sketch", "render", 17),
        ("tiny-wan2.2", "wan2.2", "Wan2.2-T2V-A14B", "Wan2.2-T2V-A14B/transformer_2", 17),
        ("tiny-cogvideox", "cogvideox", "sketch", "render", 9),
    ],
)
def test_tiny_pair_layouts(tmp_path, monkeypatch, name, family, sketch, render, frames) -> None:
    """Each embedded pair's folders and defaults, under a root or under SRSERVE_HOME/tiny/<family>; nothing written."""
    pair = ModelPairConfig.tiny_pair(name, tmp_path, write=False, num_threads=1)
    assert (pair.family, pair.sketch_path, pair.render_path) == (family, str(tmp_path / sketch), str(tmp_path / render))
    assert (pair.name, pair.device, pair.num_threads, pair.defaults.num_frames) == (
        name if name != "tiny" else "tiny-wan2.1",
        "cpu",
        1,
        frames,
    )
    monkeypatch.setenv("SRSERVE_HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / "tiny" / family
    assert ModelPairConfig.tiny_pair(name, write=False).sketch_path == str(home / sketch)
    assert not home.exists()
    shorthand = {"wan2.1": ModelPairConfig.tiny, "wan2.2": ModelPairConfig.tiny_wan22}
    assert shorthand.get(family, ModelPairConfig.tiny_cogvideox)(tmp_path, write=False) == pair.model_copy(
        update={"num_threads": None}
    )
