"""LoRA adapters in the engine: bit equality with diffusers' WanPipeline that loaded the same LoRA files,
fused adapters within a tolerance, no leak into the next job, the per-transformer LRU and its counters,
and the refusals (unknown name, a file that does not fit its model)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import save_file

from srserve.engine import GenerationRequest, HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.adapters.loading import AdapterMisfitError, check_adapters
from srserve.engine.adapters.spec import LORA, AdapterConfig, LoraSpec, lora_pattern, resolve_lora
from srserve.engine.models import components
from srserve.engine.request import RequestDefaults, describe_validation_error, error_field, resolve_request
from srserve.engine.tiny import write_tiny_wan22_pair
from srserve.engine.tiny.lora import RENDER_LORA, SKETCH_LORA, SKETCH_LORA_COMFY, write_tiny_loras

STEPS = 4
FRAMES = 9
PROMPT = "a paper boat on a river"
SEED = 11
SCALE = 0.8
# Fused adapters: fuse_lora merges W + s * B @ A once, against a per-step x @ W + s * (x @ A) @ B (float32).
FUSED_ATOL = 1e-4


def _request(switch: str, lora: str | None = None, steps: int = STEPS) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt="blurry",
        seed=SEED,
        num_inference_steps=steps,
        num_frames=FRAMES,
        switch=switch,
        lora=lora,
    )


def _with_adapters(config: ModelPairConfig, adapters: dict, **fields: object) -> ModelPairConfig:
    return ModelPairConfig.model_validate({**config.model_dump(), "adapters": adapters, **fields})


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory, tiny_config: ModelPairConfig) -> Path:
    out = tmp_path_factory.mktemp("tiny-loras")
    write_tiny_loras(out, tiny_config.sketch_path, tiny_config.render_path)
    return out


@pytest.fixture(scope="module")
def lora_config(tiny_config: ModelPairConfig, loras: Path) -> ModelPairConfig:
    return _with_adapters(
        tiny_config,
        {
            "both": {"sketch": str(loras / SKETCH_LORA), "render": str(loras / RENDER_LORA), "scale": SCALE},
            "big": {"sketch": str(loras / SKETCH_LORA)},
            "comfy": {"sketch": str(loras / SKETCH_LORA_COMFY)},
            "small": {"render": str(loras / RENDER_LORA), "scale": 0.5},
        },
    )


@pytest.fixture(scope="module")
def lora_engine(lora_config: ModelPairConfig) -> SRDiffusionEngine:
    torch.set_num_threads(1)
    return SRDiffusionEngine(lora_config)


def _latents(pipe: WanPipeline) -> torch.Tensor:
    return pipe(
        prompt=PROMPT,
        negative_prompt="blurry",
        height=64,
        width=64,
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(SEED),
        output_type="latent",
    ).frames


def _reference(
    config: ModelPairConfig, k: int, sketch_lora: Path | None, render_lora: Path | None, scale: float
) -> torch.Tensor:
    """WanPipeline on freshly loaded models that loaded the LoRA files itself: the large model alone (k = N),
    the small alone (k = 0), or both with the boundary between steps k-1 and k (the small one as transformer_2)."""
    base = WanPipeline.from_pretrained(config.sketch_path)
    small = WanTransformer3DModel.from_pretrained(config.render_path, subfolder="transformer").eval()
    parts = {
        "tokenizer": base.tokenizer,
        "text_encoder": base.text_encoder,
        "vae": base.vae,
        "scheduler": base.scheduler,
    }
    names: list[str] = []
    if k == 0:
        pipe = WanPipeline(transformer=small, **parts)
        if render_lora is not None:
            pipe.load_lora_weights(str(render_lora), adapter_name="render")
            names.append("render")
    else:
        extra = {}
        if k < STEPS:
            base.scheduler.set_timesteps(STEPS)
            ts = base.scheduler.timesteps
            extra = {"transformer_2": small, "boundary_ratio": float(ts[k - 1] + ts[k]) / 2 / 1000}
        pipe = WanPipeline(transformer=base.transformer, **parts, **extra)
        if sketch_lora is not None:
            pipe.load_lora_weights(str(sketch_lora), adapter_name="sketch")
            names.append("sketch")
        if render_lora is not None and k < STEPS:
            pipe.load_lora_weights(str(render_lora), adapter_name="render", load_into_transformer_2=True)
            names.append("render")
    if names:
        pipe.set_adapters(names, [scale] * len(names))
    pipe.set_progress_bar_config(disable=True)
    return _latents(pipe)


def test_the_request_field_and_its_grammar() -> None:
    assert GenerationRequest(prompt="x", lora="style").lora == LoraSpec(name="style")
    assert GenerationRequest(prompt="x", lora=" style : 0.5 ").lora == LoraSpec(name="style", scale=0.5)
    assert GenerationRequest(prompt="x", lora={"name": "style", "scale": 1}).lora.scale == 1.0
    pattern = LORA.pattern()
    assert re.fullmatch(pattern, "style:1.5") and not re.fullmatch(pattern, "style:5")
    for bad in ("/models/x.safetensors", "a.b", "style:", "style:9"):
        with pytest.raises(ValidationError) as err:
            GenerationRequest(prompt="x", lora=bad)
        assert error_field(err.value).startswith("lora")


_PUBLISHED_ADAPTERS = {
    "style": AdapterConfig(sketch="s.safetensors"),
    "Ink-2": AdapterConfig(render="r.safetensors", scale=0.5),
    "baked": AdapterConfig(sketch="s.safetensors", scale=0.8, fuse=True),
    "whole": AdapterConfig(render="r.safetensors", scale=1.0, fuse=True),
    "zero": AdapterConfig(render="r.safetensors", scale=0.0, fuse=True),
}
_LORA_SAMPLES = [
    *["style", "style:0.5", "style:4", "style:4.5", "Ink-2:.25", "ink-2", "baked", "baked:0.8", "baked:.80"],
    *["baked:0.81", "baked:1", "whole:1.", "whole:1.000", "whole:0.999", "zero:.0", "zero:0", "zero:0.1", "nope"],
    *["style:", "style :1", "baked:0.8000000000000001", "whole:01"],
]


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.sampled_from(_LORA_SAMPLES),
        st.from_regex(LORA.pattern(), fullmatch=True),
        st.builds(  # a configured name at a scale the grammar spells
            lambda name, text: name + text[len("x") :],
            st.sampled_from(sorted(_PUBLISHED_ADAPTERS)),
            st.from_regex(r"^x(?::[0-9.]{1,5})?$", fullmatch=True),
        ),
    )
)
def test_the_published_pattern_of_a_pairs_adapters_is_exact(text: str) -> None:
    """A deployment publishes `lora_pattern` of its adapters: a text matches it exactly when it is in the
    grammar's canonical spelling (what the HTTP schema takes) and resolves against those adapters."""
    pattern = lora_pattern(_PUBLISHED_ADAPTERS)
    assert pattern is not None and lora_pattern({}) is None
    try:
        resolve_lora(text, _PUBLISHED_ADAPTERS)
        accepted = re.fullmatch(LORA.pattern(), text) is not None
    except ValueError:  # pydantic's ValidationError included
        accepted = False
    assert bool(re.fullmatch(pattern, text)) == accepted, (text, pattern)


def test_an_unknown_name_is_refused_naming_lora(lora_engine: SRDiffusionEngine) -> None:
    with pytest.raises(ValueError) as err:
        lora_engine.resolve(_request("fixed:2", "nope"))
    assert isinstance(err.value, ValidationError) and error_field(err.value) == "lora"
    assert "unknown adapter 'nope'" in describe_validation_error(err.value)
    # Resolved without the pair's adapters (a serving layer that passes none), a name is unknown too.
    with pytest.raises(ValidationError, match="this model pair has: none"):
        resolve_request(_request("fixed:2", "both"), RequestDefaults())


def test_the_resolved_request_says_which_models_apply_it(lora_engine: SRDiffusionEngine) -> None:
    both = lora_engine.resolve(_request("fixed:2", "both")).lora
    assert (both.name, both.scale, both.sketch, both.render, both.fused) == ("both", SCALE, True, True, False)
    big = lora_engine.resolve(_request("fixed:2", "big:0.3")).lora
    assert (big.scale, big.sketch, big.render) == (0.3, True, False)
    small = lora_engine.resolve(_request("fixed:2", "small")).lora
    assert (small.scale, small.sketch, small.render) == (0.5, False, True)


def test_large_only_equals_wan_pipeline_with_the_lora(lora_engine, lora_config, loras) -> None:
    result = lora_engine.generate(_request(f"fixed:{STEPS}", "both:0.6"))
    assert torch.equal(result.latents, _reference(lora_config, STEPS, loras / SKETCH_LORA, None, 0.6))


def test_small_only_equals_wan_pipeline_with_the_lora(lora_engine, lora_config, loras) -> None:
    result = lora_engine.generate(_request("fixed:0", "both"))
    assert torch.equal(result.latents, _reference(lora_config, 0, None, loras / RENDER_LORA, SCALE))


def test_fixed_switch_equals_two_transformer_pipeline_with_both_loras(lora_engine, lora_config, loras) -> None:
    k = 2
    result = lora_engine.generate(_request(f"fixed:{k}", "both"))
    reference = _reference(lora_config, k, loras / SKETCH_LORA, loras / RENDER_LORA, SCALE)
    assert torch.equal(result.latents, reference)
    assert result.lora is not None and result.lora.render
    assert HandoffState.from_bytes(result.handoff).request.lora == result.lora  # the handoff carries it
    # The adapter changes the video: the same request without it differs.
    plain = lora_engine.generate(_request(f"fixed:{k}"), through_bytes=False)
    assert (plain.latents - result.latents).abs().max().item() > 1e-3


def test_a_sketch_only_adapter_renders_without_one(lora_engine, lora_config, loras) -> None:
    k = 2
    result = lora_engine.generate(_request(f"fixed:{k}", "big"), through_bytes=False)
    assert result.lora is not None and result.lora.sketch and not result.lora.render
    assert torch.equal(result.latents, _reference(lora_config, k, loras / SKETCH_LORA, None, 1.0))


def test_a_comfyui_style_file_is_the_same_adapter(lora_engine: SRDiffusionEngine) -> None:
    peft = lora_engine.generate(_request("fixed:2", "big"), through_bytes=False)
    comfy = lora_engine.generate(_request("fixed:2", "comfy"), through_bytes=False)
    assert torch.equal(peft.latents, comfy.latents)


def test_a_job_without_an_adapter_after_one_equals_a_fresh_engine(lora_engine, tiny_config) -> None:
    lora_engine.generate(_request("fixed:2", "both"), through_bytes=False)
    after = lora_engine.generate(_request("fixed:2"), through_bytes=False)
    components.clear()  # a fresh engine: its own transformers, loaded from disk
    fresh = SRDiffusionEngine(tiny_config).generate(_request("fixed:2"), through_bytes=False)
    assert torch.equal(after.latents, fresh.latents)
    assert np.array_equal(after.frames, fresh.frames)


def test_the_lru_evicts_and_counts(lora_config: ModelPairConfig) -> None:
    config = lora_config.model_copy(update={"adapter_cache_size": 1})
    engine = SRDiffusionEngine(config, roles={Role.TEXT, Role.SKETCH})

    def sketch(lora: str | None) -> None:
        request = engine.resolve(_request("fixed:1", lora))
        engine.sketch(request, engine.encode(request))

    sketch("big")
    sketch("big")
    sketch(None)
    stats = engine.adapter_stats()
    assert (stats.loads, stats.hits, stats.evictions, stats.capacity) == (1, 1, 0, 1)
    sketch("both")
    stats = engine.adapter_stats()
    assert (stats.loads, stats.hits, stats.evictions) == (2, 1, 1)
    assert stats.loaded == {"sketch": ["both"]}
    engine.warm_adapter("comfy")
    assert engine.adapter_stats().loaded == {"sketch": ["comfy"]}
    # Dropped on request (what Serve's multiplexing eviction calls), counted; the next use loads it again.
    engine.evict_adapter("comfy")
    engine.evict_adapter("comfy")  # not loaded: nothing to do
    stats = engine.adapter_stats()
    assert stats.loaded == {"sketch": []} and (stats.loads, stats.evictions) == (3, 3)
    assert not getattr(engine.sketch_model, "peft_config", None)  # peft drops its config with the last adapter
    sketch(None)
    sketch("big")
    assert engine.adapter_stats().loads == 4
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        engine.evict_adapter("nope")
    # An engine with another capacity holds its own transformer: never the slots of this one.
    other = SRDiffusionEngine(lora_config, roles={Role.TEXT, Role.SKETCH})
    assert other.sketch_model is not engine.sketch_model


def test_a_fused_adapter_is_within_tolerance_of_the_switched_one(lora_config, lora_engine) -> None:
    fused_config = _with_adapters(
        lora_config,
        {**lora_config.model_dump()["adapters"], "both": {**lora_config.adapters["both"].model_dump(), "fuse": True}},
    )
    fused = SRDiffusionEngine(fused_config)
    assert fused.sketch_model is not lora_engine.sketch_model
    assert fused.adapter_stats().fused == {"sketch": ["both"], "render": ["both"]}
    expected = lora_engine.generate(_request("fixed:2", "both"), through_bytes=False).latents
    for lora in (None, f"both:{SCALE}"):  # every job of the pool runs with it
        got = fused.generate(_request("fixed:2", lora), through_bytes=False).latents
        assert (got - expected).abs().max().item() < FUSED_ATOL
    with pytest.raises(ValidationError, match=r"fused into the weights at scale 0\.8"):
        fused.resolve(_request("fixed:2", "both:0.5"))
    # Another adapter still switches per job on top of the fused one.
    stacked = fused.generate(_request("fixed:2", "small"), through_bytes=False)
    assert stacked.lora is not None and stacked.lora.name == "small"


def test_a_file_that_does_not_fit_is_refused_naming_adapter_and_module(tiny_config, loras, tmp_path) -> None:
    before = components.loaded_keys()
    # The sketch's LoRA (width 384) on the render model (width 160).
    config = _with_adapters(tiny_config, {"wrong": {"render": str(loras / SKETCH_LORA)}})
    with pytest.raises(AdapterMisfitError, match=r"adapter 'wrong' \(render file .*module 'blocks\.0\.attn1\.to_k'"):
        SRDiffusionEngine(config)
    with pytest.raises(AdapterMisfitError, match="lora_A takes 384 inputs, the Linear has 160"):
        check_adapters(config)  # the same check without an engine (a serving start-up check)
    wrong = config
    # A module the model does not have (the render model has 3 blocks).
    bad = tmp_path / "bad.safetensors"
    save_file(
        {
            "transformer.blocks.7.attn1.to_q.lora_A.weight": torch.zeros(4, 160),
            "transformer.blocks.7.attn1.to_q.lora_B.weight": torch.zeros(160, 4),
        },
        str(bad),
    )
    config = _with_adapters(tiny_config, {"ghost": {"render": str(bad)}})
    with pytest.raises(AdapterMisfitError, match=r"adapter 'ghost'.*module 'blocks\.7\.attn1\.to_q' does not exist"):
        SRDiffusionEngine(config)
    # Keys for no transformer at all, and a missing file.
    save_file({"text_encoder.x.lora_A.weight": torch.zeros(4, 8)}, str(bad))
    with pytest.raises(AdapterMisfitError, match="no LoRA weights for the transformer"):
        SRDiffusionEngine(config)
    config = _with_adapters(tiny_config, {"gone": {"sketch": str(tmp_path / "missing.safetensors")}})
    with pytest.raises(AdapterMisfitError, match=r"adapter 'gone'.*no such file"):
        SRDiffusionEngine(config)
    assert components.loaded_keys() == before  # refused before any weights load
    SRDiffusionEngine(wrong, roles={Role.TEXT, Role.SKETCH})  # an engine checks the files of its own models only


def test_config_refusals(tiny_config: ModelPairConfig, loras: Path) -> None:
    with pytest.raises(ValidationError, match="needs a sketch or a render file"):
        _with_adapters(tiny_config, {"empty": {}})
    with pytest.raises(ValidationError, match="adapters"):
        _with_adapters(tiny_config, {"a.b": {"sketch": str(loras / SKETCH_LORA)}})
    with pytest.raises(ValidationError, match="switched per job"):
        _with_adapters(tiny_config, {"s": {"sketch": str(loras / SKETCH_LORA)}}, compile=True)
    _with_adapters(tiny_config, {"s": {"sketch": str(loras / SKETCH_LORA), "fuse": True}}, compile=True)


def test_wan22_sketch_lora_goes_to_transformer_and_render_lora_to_transformer_2(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("tiny-wan22-lora")
    write_tiny_wan22_pair(root)
    a14b = ModelPairConfig.tiny_wan22(root)
    # Both experts have the tiny Wan2.1 sketch's size; two seeds tell their adapters apart.
    files = write_tiny_loras(root / "loras", a14b.sketch_path, a14b.sketch_path, seed=5)
    config = _with_adapters(
        a14b, {"style": {"sketch": str(files[SKETCH_LORA]), "render": str(files[RENDER_LORA]), "scale": 0.7}}
    )
    engine = SRDiffusionEngine(config)
    switch = engine.family.boundary_switch(STEPS)
    result = engine.generate(_request(str(switch), "style"))
    pipe = WanPipeline.from_pretrained(a14b.sketch_path)
    pipe.load_lora_weights(str(files[SKETCH_LORA]), adapter_name="high")
    pipe.load_lora_weights(str(files[RENDER_LORA]), adapter_name="low", load_into_transformer_2=True)
    pipe.set_adapters(["high", "low"], [0.7, 0.7])
    pipe.set_progress_bar_config(disable=True)
    assert 0 < result.switch_step < STEPS
    assert torch.equal(result.latents, _latents(pipe))
