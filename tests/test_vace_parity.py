"""Video editing (VACE) on the tiny folders: bit-for-bit parity with diffusers' WanVACEPipeline (large only,
small only, a fixed switch) for reference images only, an inpainting video with its mask, a control video
without one, a conditioning scale other than 1, and a first frame (`input_reference`); the handoff through
bytes into freshly loaded models, older handoff versions, and requests refused for their editing inputs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanVACEPipeline
from diffusers.utils import load_video as diffusers_load_video
from PIL import Image
from safetensors.torch import save as st_save

from srserve.engine import GenerationRequest, HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.families import IncompatiblePairError, check_pair
from srserve.engine.handoff import FORMAT_NAME, FORMAT_VERSION, HandoffFormatError
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.inputs.image import ImageInputError, describe_image, load_image
from srserve.engine.inputs.video_input import VideoInputError, describe_video, load_video
from srserve.engine.models import components
from srserve.engine.request import MAX_REFERENCE_IMAGES, InputVideo
from srserve.engine.video import encode_mp4

STEPS = 4
FRAMES = 9
SIDE = 64
PROMPT = "a red fox running through snow"
NEGATIVE = "blurry"
SEED = 7
GUIDANCE = 4.0
SWITCHES = {"large": STEPS, "small": 0, "fixed": 2}


# -- inputs ---------------------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def video_bytes() -> bytes:
    """A 9-frame 64x64 mp4 of smooth colour gradients moving right (random pixels would not survive H.264)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    frames = [
        np.stack([(x * 4 + 8 * f) % 256, (y * 4) % 256, ((x + y) * 2 + 16 * f) % 256], axis=-1).astype(np.uint8)
        for f in range(FRAMES)
    ]
    return encode_mp4(np.stack(frames), fps=8)


@pytest.fixture(scope="module")
def mask_bytes() -> bytes:
    """White (regenerate) inside a box that moves, black (keep) outside."""
    frames = np.zeros((FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    for f in range(FRAMES):
        frames[f, 16:48, 8 + 2 * f : 40 + 2 * f] = 255
    return encode_mp4(frames, fps=8)


def _load(data: bytes, param: str) -> list[Image.Image]:
    return load_video(data, param, max_bytes=1 << 24, max_frames=64, max_pixels=1 << 16)


@pytest.fixture(scope="module")
def video(video_bytes: bytes) -> list[Image.Image]:
    return _load(video_bytes, "video")


@pytest.fixture(scope="module")
def mask(mask_bytes: bytes) -> list[Image.Image]:
    return _load(mask_bytes, "mask")


@pytest.fixture(scope="module")
def reference_bytes() -> list[bytes]:
    """Two references of other shapes (the pipeline letterboxes each onto a white canvas of the video's size)."""
    rng = np.random.default_rng(5)
    return [_png(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)), _png(rng.integers(0, 256, (64, 32, 3), np.uint8))]


@pytest.fixture(scope="module")
def references(reference_bytes: list[bytes]) -> list[Image.Image]:
    return [load_image(data, max_bytes=1 << 20, max_pixels=1 << 16) for data in reference_bytes]


@pytest.fixture(scope="module")
def cases(video_bytes, mask_bytes, reference_bytes, video, mask, references) -> dict[str, dict]:
    """Each conditioning case: the request's fields, the engine's decoded inputs, the pipeline's arguments."""
    described_video = describe_video(video_bytes, video)
    described_mask = describe_video(mask_bytes, mask)
    described_refs = [describe_image(data) for data in reference_bytes]
    return {
        "reference": {
            "fields": {"reference_images": described_refs},
            "edit": EditInputs(reference_images=references),
            "pipe": {"reference_images": references},
        },
        "inpaint": {
            "fields": {"video": described_video, "mask": described_mask},
            "edit": EditInputs(video=video, mask=mask),
            "pipe": {"video": video, "mask": mask},
        },
        "control": {
            "fields": {"video": described_video},
            "edit": EditInputs(video=video),
            "pipe": {"video": video},
        },
        "scaled": {
            "fields": {
                "video": described_video,
                "mask": described_mask,
                "reference_images": described_refs[:1],
                "conditioning_scale": 0.6,
            },
            "edit": EditInputs(video=video, mask=mask, reference_images=references[:1]),
            "pipe": {"video": video, "mask": mask, "reference_images": references[:1], "conditioning_scale": 0.6},
        },
    }


# -- models ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vace(tmp_path_factory: pytest.TempPathFactory) -> ModelPairConfig:
    return ModelPairConfig.tiny_pair("tiny-wan2.1-vace", tmp_path_factory.mktemp("tiny-vace"))


@pytest.fixture(scope="module")
def engine(vace: ModelPairConfig) -> SRDiffusionEngine:
    return SRDiffusionEngine(vace)


@pytest.fixture(scope="module")
def pipe(vace: ModelPairConfig) -> WanVACEPipeline:
    """diffusers' own pipeline from the VACE-14B-shaped folder: the reference."""
    pipe = WanVACEPipeline.from_pretrained(vace.sketch_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _two(pipe: WanVACEPipeline, small: torch.nn.Module, boundary: float) -> WanVACEPipeline:
    """The pipeline with the large model for timesteps >= boundary x 1000 and the small one below."""
    out = WanVACEPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        transformer=pipe.transformer,
        transformer_2=small,
        boundary_ratio=boundary,
    )
    out.set_progress_bar_config(disable=True)
    return out


def _boundary(pipe: WanVACEPipeline, k: int) -> float:
    """A boundary_ratio that makes the pipeline switch after k steps (0: the small model only, STEPS: large only)."""
    if k == 0:
        return 1.0  # no timestep reaches 1000
    if k == STEPS:
        return 0.0  # every timestep is >= 0
    pipe.scheduler.set_timesteps(STEPS)
    ts = pipe.scheduler.timesteps
    return float(ts[k - 1] + ts[k]) / 2 / pipe.scheduler.config.num_train_timesteps


def _request(switch: int, **fields: object) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=SEED,
        num_inference_steps=STEPS,
        num_frames=FRAMES,
        height=SIDE,
        width=SIDE,
        guidance_scale=GUIDANCE,
        switch=f"fixed:{switch}",
        **fields,
    )


def _run(pipe: WanVACEPipeline, output_type: str, **kwargs: object):
    call = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "height": SIDE,
        "width": SIDE,
        "num_frames": FRAMES,
        "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE,
        "generator": torch.Generator().manual_seed(SEED),
        "output_type": output_type,
    }
    return pipe(**{**call, **kwargs}).frames


# -- parity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(SWITCHES))
@pytest.mark.parametrize("case", ["reference", "inpaint", "control", "scaled"])
def test_vace_equals_pipeline(engine, pipe, cases, case: str, which: str) -> None:
    """Latents bit for bit (and, at the fixed switch, the decoded frames) against WanVACEPipeline's two-model run."""
    c, k = cases[case], SWITCHES[which]
    result = engine.generate(_request(k, **c["fields"]), edit=c["edit"])
    assert result.switch_step == k
    two = _two(pipe, engine.render_model, _boundary(pipe, k))
    references = len(c["pipe"].get("reference_images", ()))
    latents = _run(two, "latent", **c["pipe"])
    assert latents.shape[2] == 3 + references  # the pipeline's latents keep the reference frames
    assert torch.equal(result.latents, latents[:, :, references:])
    if which == "fixed":
        frames = _run(two, "np", **c["pipe"])[0]
        assert result.frames.shape == (FRAMES, SIDE, SIDE, 3)
        assert np.array_equal(result.frames, frames)


# -- input_reference: a first-frame condition ------------------------------------------------------------


@pytest.fixture(scope="module")
def first_frame_bytes() -> bytes:
    """An 80x48 image (of another size than the output: the recipe resizes it to the output's)."""
    y, x = np.mgrid[0:48, 0:80]
    return _png(np.stack([x * 3 % 256, y * 5 % 256, (x + y) % 256], axis=-1).astype(np.uint8))


@pytest.fixture(scope="module")
def first_frame(first_frame_bytes: bytes) -> Image.Image:
    return load_image(first_frame_bytes, max_bytes=1 << 20, max_pixels=1 << 16)


def _documented_first_frame(image: Image.Image) -> tuple[list[Image.Image], list[Image.Image]]:
    """diffusers' documented WanVACEPipeline image-to-video inputs, written out here as the docs write them."""
    image = image.resize((SIDE, SIDE))
    frames = [image, *[Image.new("RGB", (SIDE, SIDE), (128, 128, 128))] * (FRAMES - 1)]
    mask_black, mask_white = Image.new("L", (SIDE, SIDE), 0), Image.new("L", (SIDE, SIDE), 255)
    return frames, [mask_black, *[mask_white] * (FRAMES - 1)]


@pytest.mark.parametrize("which", sorted(SWITCHES))
@pytest.mark.parametrize("with_reference", [False, True])
def test_first_frame_equals_pipeline(
    engine, pipe, first_frame, first_frame_bytes, references, reference_bytes, which: str, with_reference: bool
) -> None:
    """`input_reference` (with `image=`) is bit for bit the pipeline given the documented video and mask lists."""
    k = SWITCHES[which]
    fields: dict = {"input_reference": describe_image(first_frame_bytes)}
    edit, call = EditInputs(), {}
    if with_reference:
        fields["reference_images"] = [describe_image(reference_bytes[1])]
        edit, call = EditInputs(reference_images=references[1:]), {"reference_images": references[1:]}
    result = engine.generate(_request(k, **fields), image=first_frame, edit=edit)
    assert result.switch_step == k
    video, mask = _documented_first_frame(first_frame)
    two = _two(pipe, engine.render_model, _boundary(pipe, k))
    latents = _run(two, "latent", video=video, mask=mask, **call)
    assert torch.equal(result.latents, latents[:, :, int(with_reference) :])
    if which == "fixed" and not with_reference:
        assert np.array_equal(result.frames, _run(two, "np", video=video, mask=mask)[0])


def test_first_frame_sketch_takes_the_image_as_image_to_video_does(engine, first_frame, first_frame_bytes) -> None:
    """The serving layer's interface: `sketch(request, encoded, image=)`; the handoff carries the context only."""
    request = engine.resolve(_request(2, input_reference=describe_image(first_frame_bytes)))
    state = engine.sketch(request, engine.encode(request), image=first_frame)
    assert state.vace_context is not None and state.reference_frames == 0 and state.image_condition is None
    plain = engine.resolve(_request(2))
    assert not torch.equal(state.vace_context, engine.sketch(plain, engine.encode(plain)).vace_context)
    with pytest.raises(ValueError, match=r"input_reference: the wan2\.1-vace sketch needs the decoded image"):
        engine.sketch(request, engine.encode(request))


def test_first_frame_refusals_name_input_reference(engine, cases, first_frame, first_frame_bytes, video) -> None:
    described = describe_image(first_frame_bytes)
    with pytest.raises(ValueError, match=r"input_reference: on the wan2\.1-vace pair .* the request gives a video"):
        engine.generate(_request(1, input_reference=described, **cases["control"]["fields"]), image=first_frame)
    with pytest.raises(ValueError, match="input_reference: an image was given; the request describes none"):
        engine.generate(_request(1), image=first_frame)
    with pytest.raises(ValueError, match="input_reference: the image is 64x64, the request describes 80x48"):
        engine.generate(_request(1, input_reference=described), image=video[0])
    with pytest.raises(ValueError, match="input_reference: a first-frame condition builds the video and mask"):
        EditInputs(video=video).with_first_frame(first_frame, SIDE, SIDE, FRAMES)


def test_each_input_conditions_the_video(engine, cases, video, mask) -> None:
    """The video, the mask, the references and the scale each change the result (no silent no-op conditioning)."""

    def latents(fields: dict, edit: EditInputs) -> torch.Tensor:
        return engine.generate(_request(2, **fields), edit=edit, through_bytes=False).latents

    inpaint = latents(cases["inpaint"]["fields"], cases["inpaint"]["edit"])
    control = latents(cases["control"]["fields"], cases["control"]["edit"])
    plain = latents({}, EditInputs())
    flipped = [frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for frame in video]
    other = latents(cases["control"]["fields"], EditInputs(video=flipped))
    scaled = latents({**cases["inpaint"]["fields"], "conditioning_scale": 0.3}, cases["inpaint"]["edit"])
    for a, b in [(inpaint, control), (control, plain), (control, other), (inpaint, scaled)]:
        assert not torch.equal(a, b)


# -- wan2.2-vace: Wan2.2-VACE-Fun-A14B's experts --------------------------------------------------------

GUIDANCE_2 = 3.0


@pytest.fixture(scope="module")
def vace22(tmp_path_factory: pytest.TempPathFactory) -> ModelPairConfig:
    return ModelPairConfig.tiny_pair(
        "tiny-wan2.2-vace", tmp_path_factory.mktemp("tiny-vace22"), guidance_scale_2=GUIDANCE_2
    )


@pytest.fixture(scope="module")
def engine22(vace22: ModelPairConfig) -> SRDiffusionEngine:
    return SRDiffusionEngine(vace22)


@pytest.fixture(scope="module")
def pipe22(vace22: ModelPairConfig) -> WanVACEPipeline:
    """The A14B-shaped folder as diffusers loads it: both experts, boundary_ratio 0.875."""
    pipe = WanVACEPipeline.from_pretrained(vace22.sketch_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("case", ["inpaint", "scaled"])
def test_wan22_vace_boundary_equals_a14b_pipeline(engine22, pipe22, cases, case: str) -> None:
    """At the model's own boundary, with guidance_scale_2 on the low-noise expert, through the handoff's bytes."""
    family = engine22.family
    assert family.boundary_ratio == 0.875
    k = family.boundary_step(STEPS)
    assert 0 < k < STEPS
    c = cases[case]
    result = engine22.generate(_request(k, **c["fields"]), edit=c["edit"])
    references = len(c["pipe"].get("reference_images", ()))
    frames = _run(pipe22, "np", guidance_scale_2=GUIDANCE_2, **c["pipe"])[0]
    assert np.array_equal(result.frames, frames)
    latents = _run(pipe22, "latent", guidance_scale_2=GUIDANCE_2, **c["pipe"])
    assert torch.equal(result.latents, latents[:, :, references:])


@pytest.mark.parametrize("which", ["large", "small"])
def test_wan22_vace_one_expert_equals_pipeline(engine22, pipe22, cases, which: str) -> None:
    expert = pipe22.transformer if which == "large" else pipe22.transformer_2
    alone = WanVACEPipeline(
        tokenizer=pipe22.tokenizer,
        text_encoder=pipe22.text_encoder,
        vae=pipe22.vae,
        scheduler=pipe22.scheduler,
        transformer=expert,
    )
    alone.set_progress_bar_config(disable=True)
    c = cases["scaled"]
    # the low-noise expert runs the request's guidance only when guidance_scale_2 is unset: compare with it off
    engine = (
        engine22
        if which == "large"
        else SRDiffusionEngine(engine22.config.model_copy(update={"guidance_scale_2": None}))
    )
    result = engine.generate(_request(SWITCHES[which], **c["fields"]), edit=c["edit"])
    assert torch.equal(result.latents, _run(alone, "latent", **c["pipe"])[:, :, 1:])


def test_wan21_vace_refuses_the_a14b_folder(vace22: ModelPairConfig) -> None:
    folder = vace22.sketch_path
    with pytest.raises(IncompatiblePairError, match=r"two-expert .* use family wan2\.2-vace"):
        check_pair(vace22.model_copy(update={"family": "wan2.1-vace", "guidance_scale_2": None, "render_path": folder}))


# -- the handoff ----------------------------------------------------------------------------------------


def _header(blob: bytes) -> dict:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(json.loads(blob[8 : 8 + size])["__metadata__"][FORMAT_NAME])


def test_handoff_through_bytes_into_fresh_models(engine, cases) -> None:
    """The sketch side alone has the video and images; the render side reads only the handoff."""
    c = cases["scaled"]
    in_memory = engine.generate(_request(2, **c["fields"]), edit=c["edit"], through_bytes=False)
    sketcher = SRDiffusionEngine(engine.config, roles={Role.TEXT, Role.SKETCH})
    request = sketcher.resolve(_request(2, **c["fields"]))
    state = sketcher.sketch(request, sketcher.encode(request), edit=c["edit"])
    assert state.reference_frames == 1 and state.latents.shape[2] == 3 + 1
    assert state.vace_context is not None and state.vace_context.shape == (1, 96, 4, 8, 8)
    blob = state.to_bytes()
    header = _header(blob)
    assert header["version"] == FORMAT_VERSION == 4 and header["reference_frames"] == 1
    assert header["request"]["conditioning_scale"] == 0.6
    components.clear()  # the render side loads its own instances from disk
    renderer = SRDiffusionEngine(engine.config, roles={Role.RENDER})
    assert renderer.render_model is not engine.render_model and renderer.vae is None
    back = HandoffState.from_bytes(blob)
    renderer.family.check_handoff(back)  # what an ingress runs on an upload, without weights
    assert torch.equal(renderer.render(back), in_memory.latents)


def test_render_refuses_a_handoff_that_does_not_fit(engine, cases) -> None:
    c = cases["scaled"]
    request = engine.resolve(_request(1, **c["fields"]))
    state = engine.sketch(request, engine.encode(request), edit=c["edit"])
    state.reference_frames = 0
    with pytest.raises(IncompatiblePairError, match="reference_frames 0, the request has 1 reference_images"):
        engine.family.check_handoff(state)
    state.reference_frames = 1
    state.vace_context = state.vace_context[:, :32]
    with pytest.raises(IncompatiblePairError, match=r"vace_context has shape \[1, 32, 4, 8, 8\], expected"):
        engine.family.check_handoff(state)
    state.vace_context = None
    with pytest.raises(IncompatiblePairError, match="no vace_context"):
        engine.render(state)


def _rewrite(blob: bytes, edit_header, drop: tuple[str, ...] = ()) -> bytes:
    """The blob's tensors (less `drop`) under its header as `edit_header` changes it."""
    from safetensors.torch import load

    header = _header(blob)
    edit_header(header)
    tensors = {k: v for k, v in load(blob).items() if k not in drop}
    return st_save(tensors, metadata={FORMAT_NAME: json.dumps(header)})


def test_older_versions_parse_and_cannot_carry_video_editing(engine, tiny_config, cases) -> None:
    # A text-to-video handoff under version 3's rules still parses and renders.
    t2v = SRDiffusionEngine(tiny_config)
    request = t2v.resolve(GenerationRequest(prompt=PROMPT, seed=SEED, num_inference_steps=STEPS, switch="fixed:2"))
    state = t2v.sketch(request, t2v.encode(request))

    def as_v3(h: dict) -> None:
        h["version"] = 3
        h.pop("reference_frames")
        for name in ("video", "mask", "reference_images", "conditioning_scale"):
            h["request"].pop(name)

    old = HandoffState.from_bytes(_rewrite(state.to_bytes(), as_v3))
    assert old.vace_context is None and old.reference_frames == 0
    assert torch.equal(t2v.render(old), t2v.render(state))

    # A VACE handoff relabelled as version 3 is refused: an older writer could not have made it.
    c = cases["inpaint"]
    vace_request = engine.resolve(_request(1, **c["fields"]))
    blob = engine.sketch(vace_request, engine.encode(vace_request), edit=c["edit"]).to_bytes()
    with pytest.raises(HandoffFormatError, match="version 3 handoff cannot carry a VACE context"):
        HandoffState.from_bytes(_rewrite(blob, lambda h: h.update(version=3)))
    with pytest.raises(HandoffFormatError, match="version 3 handoff cannot carry video-editing request fields"):
        HandoffState.from_bytes(_rewrite(blob, lambda h: h.update(version=3), drop=("vace_context",)))
    with pytest.raises(HandoffFormatError, match="reference_frames must be a non-negative integer"):
        HandoffState.from_bytes(_rewrite(blob, lambda h: h.update(reference_frames=-1)))


# -- refusals -------------------------------------------------------------------------------------------


def _described(frames: int = FRAMES, width: int = SIDE, height: int = SIDE) -> InputVideo:
    return InputVideo(sha256="0" * 64, width=width, height=height, num_frames=frames)


def test_request_refuses_editing_inputs_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match=r"mask: 5 frames of 64x64, the video has 9 frames of 64x64"):
        GenerationRequest(prompt="x", video=_described(), mask=_described(frames=5))
    with pytest.raises(ValueError, match=r"mask: 9 frames of 32x64, the video has 9 frames of 64x64"):
        GenerationRequest(prompt="x", video=_described(), mask=_described(width=32))
    with pytest.raises(ValueError, match="mask: a mask marks regions of a video; the request has no video"):
        GenerationRequest(prompt="x", mask=_described())
    with pytest.raises(ValueError, match="video: 9 frames of 64x64, the request generates num_frames 17"):
        GenerationRequest(prompt="x", video=_described(), num_frames=17)
    with pytest.raises(ValueError, match=r"video: 8 frames; .* 4k\+1"):
        GenerationRequest(prompt="x", video=_described(frames=8))
    with pytest.raises(ValueError, match=r"video: 60x64; .* multiples of 16"):
        GenerationRequest(prompt="x", video=_described(width=60))
    image = describe_image(_png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match=f"reference_images\n  List should have at most {MAX_REFERENCE_IMAGES}"):
        GenerationRequest(prompt="x", reference_images=[image] * (MAX_REFERENCE_IMAGES + 1))
    with pytest.raises(ValueError, match="conditioning_scale"):
        GenerationRequest(prompt="x", conditioning_scale=-1.0)


def test_step_caches_are_refused(engine) -> None:
    with pytest.raises(ValueError, match=r"cache: the wan2\.1-vace pair runs no step caches yet \(a sketch"):
        engine.generate(_request(1, cache="first_block:0.3"))
    engine.resolve(_request(1, cache="none"))  # no cache at all is fine


def test_unset_output_shape_is_the_videos(engine) -> None:
    resolved = engine.resolve(GenerationRequest(prompt="x", video=_described(frames=13, width=48, height=32)))
    assert (resolved.num_frames, resolved.width, resolved.height) == (13, 48, 32)


def test_engine_refuses_decoded_inputs_unlike_the_request(engine, cases, video, mask) -> None:
    fields = cases["inpaint"]["fields"]
    with pytest.raises(ValueError, match="video: 8 frames decoded, the request describes 9"):
        engine.generate(_request(1, **fields), edit=EditInputs(video=video[:8], mask=mask))
    small = [frame.resize((32, 32)) for frame in mask]
    with pytest.raises(ValueError, match="mask: frame 0 is 32x32, the request describes 64x64"):
        engine.generate(_request(1, **fields), edit=EditInputs(video=video, mask=small))
    with pytest.raises(ValueError, match="reference_images: 1 decoded, the request describes 0"):
        engine.generate(_request(1, **fields), edit=EditInputs(video=video, mask=mask, reference_images=video[:1]))
    request = engine.resolve(_request(1, **fields))
    with pytest.raises(ValueError, match=r"video: the request describes a video \(9 frames of 64x64\); its frames"):
        engine.sketch(request, engine.encode(request))
    with pytest.raises(ValueError, match="mask: decoded frames were given, the request describes no mask"):
        engine.generate(_request(1, **cases["control"]["fields"]), edit=EditInputs(video=video, mask=mask))


def test_other_pairs_refuse_editing_inputs(tiny_config, cases, video, reference_bytes) -> None:
    t2v = SRDiffusionEngine(tiny_config)
    needle = r"video: the wan2\.1 pair does not edit video \(a VACE pair does: wan2\.1-vace, wan2\.2-vace\)"
    with pytest.raises(ValueError, match=needle):
        t2v.generate(_request(1, **cases["control"]["fields"]), edit=EditInputs(video=video))
    with pytest.raises(ValueError, match=r"conditioning_scale: the wan2\.1 pair does not edit video"):
        t2v.generate(_request(1, conditioning_scale=0.5))
    with pytest.raises(ValueError, match=r"input_reference: the wan2\.1 pair is text-to-video"):
        t2v.generate(_request(1, input_reference=describe_image(reference_bytes[0])))


def test_video_loader_refuses_bad_files(video_bytes: bytes, reference_bytes: list[bytes]) -> None:
    with pytest.raises(VideoInputError, match="mask: not an mp4 video") as info:
        _load(reference_bytes[0], "mask")
    assert info.value.param == "mask"
    with pytest.raises(VideoInputError, match="video: the video has more than 4 frames"):
        load_video(video_bytes, "video", max_bytes=1 << 24, max_frames=4, max_pixels=1 << 16)
    with pytest.raises(VideoInputError, match="video: the video is 64x64 = 4096 pixels a frame, over the limit"):
        load_video(video_bytes, "video", max_bytes=1 << 24, max_frames=64, max_pixels=1024)
    with pytest.raises(VideoInputError, match=r"video: the video is .* bytes, over the limit of 100"):
        load_video(video_bytes, "video", max_bytes=100, max_frames=64, max_pixels=1 << 16)
    with pytest.raises(VideoInputError, match=r"video: the mp4 cannot be read|video: the video has no frames"):
        _load(video_bytes[:64], "video")


def test_video_loader_reads_what_diffusers_load_video_reads(video_bytes: bytes, video, tmp_path: Path) -> None:
    """Frame for frame the frames diffusers' own `load_video` gives a WanVACEPipeline user for the same file."""
    path = tmp_path / "video.mp4"
    path.write_bytes(video_bytes)
    theirs = diffusers_load_video(str(path))
    assert len(theirs) == len(video) == FRAMES
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(theirs, video, strict=True))


def test_reference_image_refusals_name_their_field() -> None:
    with pytest.raises(ImageInputError, match=r"reference_images\[1\]: not a PNG, JPEG or WebP image") as info:
        load_image(b"not an image", max_bytes=1 << 20, max_pixels=1 << 16, param="reference_images[1]")
    assert info.value.param == "reference_images[1]"


# -- the pair check -------------------------------------------------------------------------------------


def test_pair_check_names_the_misfit(vace: ModelPairConfig, tiny_config: ModelPairConfig, tmp_path: Path) -> None:
    with pytest.raises(IncompatiblePairError, match="render transformer is a 'WanTransformer3DModel', not a"):
        check_pair(vace.model_copy(update={"render_path": tiny_config.render_path}))
    bad = tmp_path / "render"
    shutil.copytree(vace.render_path, bad)
    config_file = bad / "transformer" / "config.json"
    original = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**original, "vace_in_channels": 64}))
    with pytest.raises(IncompatiblePairError, match=r"render transformer vace_in_channels 64 != 96"):
        check_pair(vace.model_copy(update={"render_path": str(bad)}))
    config_file.write_text(json.dumps({**original, "vace_layers": [1, 5]}))
    with pytest.raises(IncompatiblePairError, match=r"render transformer vace_layers \[1, 5\]"):
        check_pair(vace.model_copy(update={"render_path": str(bad)}))
    config_file.write_text(json.dumps({**original, "text_dim": 32}))
    with pytest.raises(IncompatiblePairError, match="transformer mismatch on 'text_dim'"):
        check_pair(vace.model_copy(update={"render_path": str(bad)}))
