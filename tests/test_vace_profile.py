"""The derived planner profile of the Wan2.1 VACE pair: the committed file is what its script derives from the
T2V profile and the VACE blocks' FLOPs, marked derived, every step dearer than its T2V step by its blocks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from srserve.planner.profile import Profile

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("derive_vace", ROOT / "benchmarks" / "derive_vace_profile.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_derived_vace_profile_is_what_its_script_derives() -> None:
    script = _script()
    base = Profile.read(script.WAN21_PROFILE)
    committed = Profile.read(script.RESULTS / script.OUT_NAME)
    assert committed == script.derive(base, script.vace_weights_gib())
    assert committed.source == "derived" and committed.description.startswith("DERIVED, not measured")
    assert committed.model_pair == "wan2.1-vace" and committed.adaptive_switch == {}
    assert set(committed.kinds) == set(base.kinds)
    for kind, costs in committed.kinds.items():
        for shape, c in costs.shapes.items():
            t2v = base.kinds[kind].shapes[shape]
            # 8 of the 14B's 40 blocks and 15 of the 1.3B's 30 run again over the context: about +20% and +50%
            assert 1.2 < c.large_step_s / t2v.large_step_s < 1.25, (kind, shape)
            assert 1.5 < c.small_step_s / t2v.small_step_s < 1.55, (kind, shape)
            assert c.sketch_overhead_s == pytest.approx(t2v.decode_s)  # two encodes at half a decode each
            assert (c.encode_s, c.decode_s) == (t2v.encode_s, t2v.decode_s)
    assert committed.role_memory_gib["large"] > base.role_memory_gib["large"] + 5  # 8 blocks of d 5120
    assert committed.fits("H100", ("large", "text_encoder")) and committed.fits("A100", ("small", "vae"))
