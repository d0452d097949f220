"""`compile: true` on a model pair: regional torch.compile of the transformers' repeated blocks.

On the tiny Wan pair (CPU, float32) a compiled engine's output matches the eager engine's within
COMPILE_ATOL (inductor reorders float32 reductions, so bit equality is not expected; measured here:
3.3e-6 on latents of magnitude ~4.7). The first compiled call compiles both transformers' blocks
(about a minute on a 2-core CPU with a cold inductor cache), hence `slow`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.engine.models import components

COMPILE_ATOL = 1e-4


@pytest.mark.slow
def test_compiled_pair_matches_eager(tiny_config: ModelPairConfig, engine: SRDiffusionEngine) -> None:
    compiled = SRDiffusionEngine(tiny_config.model_copy(update={"compile": True}))
    # Own instances: compiling in place must never change the eager engine's modules.
    assert compiled.sketch_model is not engine.sketch_model
    assert compiled.render_model is not engine.render_model
    for model in (compiled.sketch_model, compiled.render_model):
        assert all(block._compiled_call_impl is not None for block in model.blocks)
    for model in (engine.sketch_model, engine.render_model):
        assert all(block._compiled_call_impl is None for block in model.blocks)

    request = GenerationRequest(prompt="a red fox", switch="fixed:3", num_inference_steps=6, num_frames=9, seed=1)
    eager = engine.generate(request)
    got = compiled.generate(request)
    assert got.switch_step == eager.switch_step == 3
    assert torch.isfinite(got.latents).all()
    assert (got.latents - eager.latents).abs().max().item() <= COMPILE_ATOL
    assert np.abs(got.frames - eager.frames).max() <= COMPILE_ATOL
    kinds = {key[0] for key in components.loaded_keys()}
    assert {"transformer[native]", "transformer[native,compiled]"} <= kinds


def test_compile_refused_before_loading_for_a_class_without_repeated_blocks(tmp_path) -> None:
    config = ModelPairConfig.tiny_cogvideox(tmp_path, compile=True)
    components.clear()
    with pytest.raises(ValueError, match=r"CogVideoXTransformer3DModel.*no repeated blocks"):
        SRDiffusionEngine(config)
    assert components.loaded_keys() == []


def test_compilable_classes() -> None:
    components.check_compilable("WanTransformer3DModel")
    with pytest.raises(ValueError, match="no repeated blocks"):
        components.check_compilable(None)


def test_compile_defaults_off() -> None:
    assert ModelPairConfig.model_fields["compile"].default is False
    assert components.transformer_kind("native") == "transformer[native]"
    assert components.transformer_kind("flash", compiled=True) == "transformer[flash,compiled]"


def test_compile_accepts_both_wan22_experts(tmp_path) -> None:
    """The render model of a two-expert folder is its transformer_2/: the check reads that expert's class."""
    pair = ModelPairConfig.tiny_wan22(tmp_path, compile=True)
    engine = SRDiffusionEngine(pair)
    for model in (engine.sketch_model, engine.render_model):
        assert type(model).__name__ == "WanTransformer3DModel"
    assert engine.family.transformer_config(pair.render_path, render=True)["_class_name"] == "WanTransformer3DModel"
