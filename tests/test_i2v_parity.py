"""Image-to-video on the tiny folders: bit-for-bit parity with diffusers' WanImageToVideoPipeline
(large only, small only, a fixed switch; Wan2.2-I2V-A14B at its own boundary), handoffs through bytes
into freshly loaded models, version-1 handoffs, and requests refused for their image."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from PIL import Image
from safetensors.torch import save as st_save

from srserve.engine import GenerationRequest, HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.families import IncompatiblePairError
from srserve.engine.families.wan22 import Wan22Family
from srserve.engine.handoff import FORMAT_NAME, FORMAT_VERSION, HandoffFormatError
from srserve.engine.inputs.image import describe_image, load_image
from srserve.engine.models import components

STEPS = 4
PROMPT = "a red fox running through snow"
NEGATIVE = "blurry"
SEED = 7
GUIDANCE = 4.0
GUIDANCE_2 = 3.0


@pytest.fixture(scope="module")
def image_bytes() -> bytes:
    """A non-square PNG (80x48): the pipeline's preprocess stretches it to the request's 64x64."""
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image(image_bytes: bytes) -> Image.Image:
    return load_image(image_bytes, max_bytes=1 << 20, max_pixels=1 << 16)


@pytest.fixture(scope="module")
def i2v21(tmp_path_factory: pytest.TempPathFactory) -> ModelPairConfig:
    return ModelPairConfig.tiny_pair("tiny-wan2.1-i2v", tmp_path_factory.mktemp("tiny-i2v21"))


@pytest.fixture(scope="module")
def i2v22(tmp_path_factory: pytest.TempPathFactory) -> ModelPairConfig:
    return ModelPairConfig.tiny_pair(
        "tiny-wan2.2-i2v", tmp_path_factory.mktemp("tiny-i2v22"), guidance_scale_2=GUIDANCE_2
    )


@pytest.fixture(scope="module")
def engine21(i2v21: ModelPairConfig) -> SRDiffusionEngine:
    return SRDiffusionEngine(i2v21)


@pytest.fixture(scope="module")
def engine22(i2v22: ModelPairConfig) -> SRDiffusionEngine:
    return SRDiffusionEngine(i2v22)


@pytest.fixture(scope="module")
def pipe21(i2v21: ModelPairConfig) -> WanImageToVideoPipeline:
    """diffusers' own pipeline from the Wan2.1-I2V-14B-shaped folder (CLIP encoder included): the reference."""
    pipe = WanImageToVideoPipeline.from_pretrained(i2v21.sketch_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe22(i2v22: ModelPairConfig) -> WanImageToVideoPipeline:
    """The Wan2.2-I2V-A14B-shaped folder as diffusers loads it: both experts, boundary_ratio 0.9."""
    pipe = WanImageToVideoPipeline.from_pretrained(i2v22.sketch_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _request(image_bytes: bytes, switch: str, steps: int = STEPS, **fields: object) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=SEED,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        switch=switch,
        input_reference=describe_image(image_bytes),
        **fields,
    )


def _run(pipe: WanImageToVideoPipeline, image: Image.Image, output_type: str = "latent", **kwargs: object):
    call = {
        "image": image,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "height": 64,
        "width": 64,
        "num_frames": 17,
        "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE,
        "generator": torch.Generator().manual_seed(SEED),
        "output_type": output_type,
    }
    return pipe(**{**call, **kwargs}).frames


def _pipe_with(pipe: WanImageToVideoPipeline, transformer, transformer_2=None, boundary=None):
    out = WanImageToVideoPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        image_processor=pipe.image_processor,
        image_encoder=pipe.image_encoder,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=boundary,
    )
    out.set_progress_bar_config(disable=True)
    return out


def _boundary_between(pipe: WanImageToVideoPipeline, k: int) -> float:
    """A boundary_ratio that puts the pipeline's switch between step k-1 and k."""
    pipe.scheduler.set_timesteps(STEPS)
    ts = pipe.scheduler.timesteps
    return float(ts[k - 1] + ts[k]) / 2 / pipe.scheduler.config.num_train_timesteps


# -- wan2.1-i2v: Wan2.1-I2V-14B sketches, a 36-channel 1.3B (Fun-InP) renders ------------------------


def test_wan21_i2v_large_only_equals_pipeline(engine21, pipe21, image, image_bytes) -> None:
    result = engine21.generate(_request(image_bytes, f"fixed:{STEPS}"), image=image)
    assert result.switch_step == STEPS
    frames = _run(pipe21, image, output_type="np")[0]
    assert np.array_equal(result.frames, frames)


def test_wan21_i2v_small_only_equals_pipeline(engine21, pipe21, image, image_bytes) -> None:
    reference = _run(_pipe_with(pipe21, engine21.render_model), image)
    result = engine21.generate(_request(image_bytes, "fixed:0"), image=image)
    assert result.switch_step == 0
    assert torch.equal(result.latents, reference)


def test_wan21_i2v_fixed_switch_equals_two_transformer_pipeline(engine21, pipe21, image, image_bytes) -> None:
    k = 2
    two = _pipe_with(pipe21, pipe21.transformer, engine21.render_model, _boundary_between(pipe21, k))
    reference = _run(two, image)
    in_memory = engine21.generate(_request(image_bytes, f"fixed:{k}"), image=image, through_bytes=False)
    assert in_memory.switch_step == k
    assert torch.equal(in_memory.latents, reference)

    # Through the handoff's bytes into freshly loaded models: the sketch side alone has the image.
    sketcher = SRDiffusionEngine(engine21.config, roles={Role.TEXT, Role.SKETCH})
    request = sketcher.resolve(_request(image_bytes, f"fixed:{k}"))
    state = sketcher.sketch(request, sketcher.encode(request), image=image)
    assert state.image_condition is not None and state.image_embeds is not None
    blob = state.to_bytes()
    assert json.loads(_header(blob)[FORMAT_NAME])["version"] == FORMAT_VERSION
    components.clear()
    renderer = SRDiffusionEngine(engine21.config, roles={Role.RENDER})
    assert renderer.render_model is not engine21.render_model and renderer.image_encoder is None
    assert torch.equal(renderer.render(HandoffState.from_bytes(blob)), in_memory.latents)


def test_render_refuses_a_handoff_without_the_image(engine21, image, image_bytes) -> None:
    request = engine21.resolve(_request(image_bytes, "fixed:1"))
    state = engine21.sketch(request, engine21.encode(request), image=image)
    engine21.family.check_handoff(state)  # what an ingress runs on an upload, without weights
    state.image_embeds = state.image_embeds[..., :8]
    with pytest.raises(IncompatiblePairError, match="image_embeds have shape"):
        engine21.family.check_handoff(state)
    state.image_condition = None
    with pytest.raises(IncompatiblePairError, match="no image_condition"):
        engine21.render(state)


def test_the_image_conditions_the_video(engine21, image, image_bytes) -> None:
    """Both the first-frame condition and the CLIP embeddings reach the models (not a no-op conditioning)."""
    request = engine21.resolve(_request(image_bytes, "fixed:1"))
    encoded = engine21.encode(request)
    state = engine21.sketch(request, encoded, image=image)
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    other = engine21.sketch(request, encoded, image=flipped)
    assert not torch.equal(state.image_condition, other.image_condition)
    assert not torch.equal(state.image_embeds, other.image_embeds)
    assert not torch.equal(state.latents, other.latents)
    assert state.image_condition.shape == (1, 20, 5, 8, 8)
    assert torch.equal(state.image_condition[:, :4, 0], torch.ones(1, 4, 8, 8))  # the mask: first frame only
    assert not state.image_condition[:, :4, 1:].any()


def test_adaptive_switch_is_the_fixed_switch_it_chose(engine21, image, image_bytes) -> None:
    """The adaptive rule only observes the sketch's predictions: its run equals fixed:k at the k it chose."""
    steps = 6
    adaptive = engine21.generate(_request(image_bytes, "adaptive:0.5", steps), image=image)
    lo, hi = round(0.1 * steps), round(0.6 * steps)
    assert lo <= adaptive.switch_step <= hi and adaptive.switch_trace
    fixed = engine21.generate(_request(image_bytes, f"fixed:{adaptive.switch_step}", steps), image=image)
    assert torch.equal(adaptive.latents, fixed.latents)


def test_step_caches_run_on_both_i2v_stages(engine21, image, image_bytes) -> None:
    """A step cache hooks each stage's model for its own steps; image conditioning changes nothing there."""
    steps, switch = 8, "fixed:4"
    calls: list[int] = []
    models = (engine21.sketch_model, engine21.render_model)
    hooks = [m.blocks[-1].ffn.net[0].register_forward_hook(lambda *_: calls.append(1)) for m in models]
    try:
        plain = engine21.generate(_request(image_bytes, switch, steps, cache="none"), image=image)
        full, calls[:] = len(calls), []
        assert full == 2 * steps  # every step, both CFG branches
        cached = engine21.generate(_request(image_bytes, switch, steps, cache="first_block:0.3"), image=image)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) < full, "the cache skipped no computation"
    assert torch.isfinite(cached.latents).all() and not torch.equal(cached.latents, plain.latents)
    assert not any(m.is_cache_enabled for m in models)


# -- wan2.2-i2v: Wan2.2-I2V-A14B's experts ------------------------------------------------------------


def test_wan22_i2v_boundary_equals_a14b_pipeline(engine22, pipe22, image, image_bytes) -> None:
    family = engine22.family
    assert isinstance(family, Wan22Family) and family.boundary_ratio == 0.9
    k = family.boundary_step(STEPS)
    assert 0 < k < STEPS
    request = _request(image_bytes, f"fixed:{k}")
    result = engine22.generate(request, image=image)
    assert result.switch_step == k
    assert torch.equal(result.latents, _run(pipe22, image, guidance_scale_2=GUIDANCE_2))


@pytest.mark.parametrize("which", ["large", "small"])
def test_wan22_i2v_one_expert_equals_pipeline(engine22, pipe22, image, image_bytes, which: str) -> None:
    expert = pipe22.transformer if which == "large" else pipe22.transformer_2
    reference = _run(_pipe_with(pipe22, expert), image)
    switch = f"fixed:{STEPS}" if which == "large" else "fixed:0"
    # the low-noise expert runs the request's guidance only when guidance_scale_2 is unset: compare with it off
    engine = (
        engine22
        if which == "large"
        else SRDiffusionEngine(engine22.config.model_copy(update={"guidance_scale_2": None}))
    )
    assert torch.equal(engine.generate(_request(image_bytes, switch), image=image).latents, reference)


# -- handoff versions ----------------------------------------------------------------------------------


def _header(blob: bytes) -> dict:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size])["__metadata__"]


def _v1_blob(state: HandoffState) -> bytes:
    """A handoff written by the version-1 rules: the same tensors and header, no image tensors, version 1."""
    tensors = {
        "latents": state.latents,
        "prompt_embeds": state.prompt_embeds,
        "generator_state": state.generator_state,
        "timesteps": state.timesteps,
    }
    if state.negative_prompt_embeds is not None:
        tensors["negative_prompt_embeds"] = state.negative_prompt_embeds
    if state.sigmas is not None:
        tensors["sigmas"] = state.sigmas
    for name, tensor in state.scheduler.tensors.items():
        tensors[f"scheduler/{name}"] = tensor
    header = {
        "format": FORMAT_NAME,
        "version": 1,
        "family": state.family,
        "job_id": state.job_id,
        "switch_step": state.switch_step,
        "request": state.request.model_dump(mode="json", exclude={"input_reference"}),
        "scheduler": {"class_name": state.scheduler.class_name, "values": state.scheduler.values},
        "switch_trace": state.switch_trace,
        "extras": state.extras,
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return st_save(tensors, metadata={FORMAT_NAME: json.dumps(header)})


def test_version_1_text_to_video_handoff_still_renders(engine) -> None:
    """A T2V handoff written by an srserve of format version 1 renders as before."""
    request = engine.resolve(GenerationRequest(prompt=PROMPT, seed=SEED, num_inference_steps=STEPS, switch="fixed:2"))
    state = engine.sketch(request, engine.encode(request))
    old = HandoffState.from_bytes(_v1_blob(state))
    assert old.image_condition is None and old.image_embeds is None
    assert torch.equal(engine.render(old), engine.render(state))


def test_version_1_handoff_is_refused_by_an_i2v_render(engine21, image, image_bytes) -> None:
    request = engine21.resolve(_request(image_bytes, "fixed:1"))
    blob = _v1_blob(engine21.sketch(request, engine21.encode(request), image=image))
    with pytest.raises(IncompatiblePairError, match="version 1 handoff"):
        engine21.render(HandoffState.from_bytes(blob))


def test_version_1_blob_with_image_tensors_is_refused(engine21, image, image_bytes) -> None:
    request = engine21.resolve(_request(image_bytes, "fixed:1"))
    state = engine21.sketch(request, engine21.encode(request), image=image)
    blob = state.to_bytes()
    header = json.loads(_header(blob)[FORMAT_NAME])
    header["version"] = 1
    tensors = {"latents": state.latents, "image_condition": state.image_condition}
    with pytest.raises(HandoffFormatError, match="version 1 handoff cannot carry image tensors"):
        HandoffState.from_bytes(st_save(tensors, metadata={FORMAT_NAME: json.dumps(header)}))


# -- the request and its image -------------------------------------------------------------------------


def test_i2v_pair_refuses_a_request_without_an_image(engine21, image_bytes) -> None:
    bare = GenerationRequest(prompt=PROMPT, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"input_reference: the wan2\.1-i2v pair generates from an image"):
        engine21.generate(bare)
    described = _request(image_bytes, "fixed:1")
    with pytest.raises(ValueError, match=r"input_reference: the wan2\.1-i2v sketch needs the decoded image"):
        engine21.sketch(engine21.resolve(described), engine21.encode(engine21.resolve(described)))


def test_i2v_pair_refuses_an_image_unlike_its_description(engine21, image, image_bytes) -> None:
    other = image.resize((32, 32))
    with pytest.raises(ValueError, match="input_reference: the image is 32x32, the request describes 80x48"):
        engine21.generate(_request(image_bytes, "fixed:1"), image=other)


def test_t2v_pair_refuses_an_image(engine, image, image_bytes) -> None:
    with pytest.raises(ValueError, match=r"input_reference: the wan2\.1 pair is text-to-video"):
        engine.generate(_request(image_bytes, "fixed:1"), image=image)
    plain = GenerationRequest(prompt=PROMPT, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"input_reference: the wan2\.1 pair is text-to-video"):
        engine.generate(plain, image=image)


@pytest.fixture(scope="module")
def engine(tiny_config: ModelPairConfig) -> SRDiffusionEngine:
    return SRDiffusionEngine(tiny_config)
