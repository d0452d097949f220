"""Wan2.2 A14B on the tiny A14B-shaped folder: parity with diffusers' WanPipeline (transformer_2,
boundary_ratio, guidance_scale_2), handoffs through bytes into fresh models, the cross pair (a Wan2.2
high-noise sketch rendered by a Wan2.1 small model), the pairs refused at load and the handoffs
refused at request time, the CLI, and the planner's derived profile for two equal-size pools."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from pydantic import ValidationError

from srserve.cli.main import main as cli_main
from srserve.engine import GenerationRequest, HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.families import IncompatiblePairError, check_pair, get_family
from srserve.engine.families.wan22 import HANDOFF_EXTRAS_KEY, Wan22Family
from srserve.engine.models import components
from srserve.engine.tiny import write_tiny_wan22_pair, write_tiny_wan22_ti2v
from srserve.engine.tiny.wan22 import A14B_DIR, LOW_NOISE_SUBFOLDER
from srserve.engine.video import read_mp4

STEPS = 8
PROMPT = "a red fox running through snow"
NEGATIVE = "blurry"
SEED = 7
GUIDANCE = 4.0  # Wan2.2-T2V-A14B's guidance for the high-noise expert ...
GUIDANCE_2 = 3.0  # ... and guidance_scale_2 for the low-noise one
BOUNDARY_STEP = 3  # of 8: the timesteps 999, 954, 900 are >= 0.875 * 1000
ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "benchmarks" / "results" / "profile_wan22_a100_derived.json"


@pytest.fixture(scope="module")
def a14b_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-wan22")
    write_tiny_wan22_pair(root)
    return root


@pytest.fixture(scope="module")
def a14b(a14b_root: Path) -> ModelPairConfig:
    """The tiny A14B pair with guidance_scale_2 set, as Wan2.2 is run."""
    return ModelPairConfig.tiny_wan22(a14b_root, guidance_scale_2=GUIDANCE_2)


@pytest.fixture(scope="module")
def wan22_engine(a14b: ModelPairConfig) -> SRDiffusionEngine:
    torch.set_num_threads(1)
    return SRDiffusionEngine(a14b)


@pytest.fixture(scope="module")
def wan22_pipe(a14b: ModelPairConfig) -> WanPipeline:
    """diffusers' own WanPipeline from the A14B folder (both experts, its boundary_ratio): the reference."""
    pipe = WanPipeline.from_pretrained(a14b.sketch_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ti2v_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wan22_ti2v(tmp_path_factory.mktemp("tiny-ti2v"))


def _request(switch: str, steps: int = STEPS) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=SEED,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        switch=switch,
    )


def _run(pipe: WanPipeline, output_type: str = "latent", **kwargs) -> torch.Tensor | np.ndarray:
    call = {
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


def _pipe_with(
    pipe: WanPipeline,
    transformer: torch.nn.Module | None,
    transformer_2: torch.nn.Module | None,
    boundary: float | None,
) -> WanPipeline:
    out = WanPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        transformer=transformer,
        transformer_2=transformer_2,
        scheduler=pipe.scheduler,
        boundary_ratio=boundary,
    )
    out.set_progress_bar_config(disable=True)
    return out


def _boundary_between(pipe: WanPipeline, k: int) -> float:
    """A boundary_ratio that puts WanPipeline's switch between step k-1 and k."""
    pipe.scheduler.set_timesteps(STEPS)
    ts = pipe.scheduler.timesteps
    return float(ts[k - 1] + ts[k]) / 2 / pipe.scheduler.config.num_train_timesteps


def _family(engine: SRDiffusionEngine) -> Wan22Family:
    assert isinstance(engine.family, Wan22Family)
    return engine.family


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the tiny folder -------------------------------------------------------------------------------


def test_tiny_folder_is_shaped_like_a14b(a14b: ModelPairConfig, wan22_pipe: WanPipeline, tiny_root: Path) -> None:
    folder = Path(a14b.sketch_path)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["boundary_ratio"] == 0.875 and index["expand_timesteps"] is False
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    assert a14b.render_path == str(folder / LOW_NOISE_SUBFOLDER)
    high, low = (json.loads((folder / sub / "config.json").read_text()) for sub in ("transformer", "transformer_2"))
    assert {k: v for k, v in high.items() if k != "_name_or_path"} == {
        k: v for k, v in low.items() if k != "_name_or_path"
    }  # equal size
    assert not _same_weights(wan22_pipe.transformer, wan22_pipe.transformer_2)  # two experts
    sched = wan22_pipe.scheduler.config
    assert type(wan22_pipe.scheduler) is UniPCMultistepScheduler
    assert (sched.prediction_type, sched.use_flow_sigmas, sched.flow_shift) == ("flow_prediction", True, 3.0)
    # The same umT5 and VAE weights as the tiny Wan2.1 pair (so a Wan2.1 model can render its sketch).
    wan21 = WanPipeline.from_pretrained(tiny_root / "sketch")
    assert _same_weights(wan21.text_encoder, wan22_pipe.text_encoder)
    assert _same_weights(wan21.vae, wan22_pipe.vae)


# -- parity with WanPipeline -----------------------------------------------------------------------


@pytest.mark.parametrize("guidance_2", [GUIDANCE_2, None])
def test_boundary_switch_equals_wan_pipeline(
    a14b: ModelPairConfig, wan22_pipe: WanPipeline, guidance_2: float | None
) -> None:
    """The default switch is the model's boundary: the engine equals WanPipeline on the folder, bit for bit."""
    engine = SRDiffusionEngine(a14b.model_copy(update={"guidance_scale_2": guidance_2}))
    family = _family(engine)
    assert family.boundary_ratio == wan22_pipe.config.boundary_ratio == 0.875
    assert family.boundary_step(STEPS) == BOUNDARY_STEP
    assert str(family.boundary_switch(STEPS)) == f"fixed:{BOUNDARY_STEP}"
    result = engine.generate(_request(f"fixed:{BOUNDARY_STEP}"))  # through the handoff's bytes
    assert result.switch_step == BOUNDARY_STEP
    assert torch.equal(result.latents, _run(wan22_pipe, guidance_scale_2=guidance_2))
    assert np.array_equal(result.frames, _run(wan22_pipe, "np", guidance_scale_2=guidance_2)[0])
    # The render model is the low-noise expert, the sketch model the high-noise one.
    assert _same_weights(engine.render_model, wan22_pipe.transformer_2)
    assert _same_weights(engine.sketch_model, wan22_pipe.transformer)


@pytest.mark.parametrize("k", [1, 5])
def test_fixed_switch_off_the_boundary_equals_wan_pipeline_with_its_boundary_there(
    wan22_engine: SRDiffusionEngine, wan22_pipe: WanPipeline, k: int
) -> None:
    """Elsewhere the guidance follows the model: WanPipeline with its boundary moved to step k."""
    moved = _pipe_with(wan22_pipe, wan22_pipe.transformer, wan22_pipe.transformer_2, _boundary_between(wan22_pipe, k))
    result = wan22_engine.generate(_request(f"fixed:{k}"), through_bytes=False)
    assert result.switch_step == k
    assert torch.equal(result.latents, _run(moved, guidance_scale_2=GUIDANCE_2))


def test_one_expert_alone_equals_wan_pipeline_on_it(wan22_engine: SRDiffusionEngine, wan22_pipe: WanPipeline) -> None:
    high_only = _pipe_with(wan22_pipe, wan22_pipe.transformer, None, None)
    assert torch.equal(wan22_engine.generate(_request(f"fixed:{STEPS}")).latents, _run(high_only))
    low_only = _pipe_with(wan22_pipe, wan22_pipe.transformer_2, None, None)
    result = wan22_engine.generate(_request("fixed:0"))
    assert torch.equal(result.latents, _run(low_only, guidance_scale=GUIDANCE_2))  # render steps: guidance_scale_2


def test_adaptive_switch_through_bytes_equals_that_fixed_switch(wan22_engine: SRDiffusionEngine) -> None:
    adaptive = wan22_engine.generate(_request("adaptive:0.05:1:6"))
    assert 1 <= adaptive.switch_step <= 6
    fixed = wan22_engine.generate(_request(f"fixed:{adaptive.switch_step}"), through_bytes=False)
    assert torch.equal(adaptive.latents, fixed.latents)


def test_handoff_through_bytes_into_fresh_models_equals_wan_pipeline(
    a14b: ModelPairConfig, wan22_engine: SRDiffusionEngine, wan22_pipe: WanPipeline
) -> None:
    sketcher = SRDiffusionEngine(a14b, roles={Role.TEXT, Role.SKETCH})
    request = sketcher.resolve(_request(f"fixed:{BOUNDARY_STEP}"))
    blob = sketcher.sketch(request, sketcher.encode(request)).to_bytes()
    assert isinstance(blob, bytes)
    components.clear()  # the render side loads its own instances from disk
    renderer = SRDiffusionEngine(a14b, roles={Role.RENDER, Role.DECODE})
    assert renderer.render_model is not wan22_engine.render_model and renderer.sketch_model is None
    state = HandoffState.from_bytes(blob)
    assert state.family == "wan2.2" and state.extras[HANDOFF_EXTRAS_KEY] == {
        "boundary_ratio": 0.875,
        "boundary_step": BOUNDARY_STEP,
    }
    latents = renderer.render(state)
    assert torch.equal(latents, _run(wan22_pipe, guidance_scale_2=GUIDANCE_2))
    assert np.array_equal(renderer.decode(latents), _run(wan22_pipe, "np", guidance_scale_2=GUIDANCE_2)[0])


def test_guidance_scale_2_changes_only_the_render(a14b: ModelPairConfig, wan22_engine: SRDiffusionEngine) -> None:
    plain = SRDiffusionEngine(a14b.model_copy(update={"guidance_scale_2": None}))
    request = wan22_engine.resolve(_request(f"fixed:{BOUNDARY_STEP}"))
    a = wan22_engine.sketch(request, wan22_engine.encode(request))
    b = plain.sketch(request, plain.encode(request))
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(wan22_engine.render(a), plain.render(b))


# -- the cross pair --------------------------------------------------------------------------------


def test_cross_pair_wan22_sketch_wan21_render_equals_wan_pipeline(
    a14b: ModelPairConfig, wan22_pipe: WanPipeline, tiny_root: Path, tiny_config: ModelPairConfig
) -> None:
    """The high-noise expert sketches, the tiny Wan2.1 small model renders: WanPipeline with that transformer_2."""
    cross = a14b.model_copy(update={"name": "tiny-wan2.2-wan2.1", "render_path": str(tiny_root / "render")})
    check_pair(cross)
    cross_engine = SRDiffusionEngine(cross)
    # A Wan2.1 engine over the same folder shares the instance (the cache key is not tagged by Wan2.2);
    # checked against a new engine, since other tests clear the component cache.
    assert SRDiffusionEngine(tiny_config).render_model is cross_engine.render_model
    small = WanTransformer3DModel.from_pretrained(tiny_root / "render" / "transformer")
    reference = _pipe_with(wan22_pipe, wan22_pipe.transformer, small, 0.875)
    result = cross_engine.generate(_request(f"fixed:{BOUNDARY_STEP}"))
    assert torch.equal(result.latents, _run(reference, guidance_scale_2=GUIDANCE_2))
    assert np.array_equal(result.frames, _run(reference, "np", guidance_scale_2=GUIDANCE_2)[0])


# -- pairs refused at load -------------------------------------------------------------------------


def _refused(config: ModelPairConfig, *fragments: str) -> str:
    with pytest.raises(IncompatiblePairError) as caught:
        check_pair(config)
    with pytest.raises(IncompatiblePairError):
        SRDiffusionEngine(config)  # the engine runs the same check before any weights load
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_ti2v_render_is_refused_naming_the_latent_space(a14b: ModelPairConfig, ti2v_folder: Path) -> None:
    _refused(
        a14b.model_copy(update={"render_path": str(ti2v_folder)}),
        "transformer in_channels: sketch has 16, render has 48",
        "transformer out_channels: sketch has 16, render has 48",
        "VAE z_dim: sketch has 16, render has 48",
        "VAE scale_factor_spatial: sketch has 8, render has 16",
        "scheduler flow_shift: sketch has 3.0, render has 5.0",
    )


def test_sketch_must_be_the_a14b_high_noise_expert(a14b: ModelPairConfig, ti2v_folder: Path, tiny_root: Path) -> None:
    _refused(a14b.model_copy(update={"sketch_path": str(ti2v_folder)}), "expand_timesteps")
    _refused(a14b.model_copy(update={"sketch_path": str(tiny_root / "sketch")}), "no boundary_ratio", "wan2.1")
    _refused(a14b.model_copy(update={"sketch_path": a14b.render_path}), "must be the high-noise expert")
    high = str(Path(a14b.sketch_path) / "transformer")
    _refused(a14b.model_copy(update={"render_path": high}), "the same transformer")
    message = _refused(a14b.model_copy(update={"render_path": a14b.sketch_path}), "same folder")
    assert f"render_path: {a14b.render_path!r}" in message  # the fix, spelled out


@pytest.mark.parametrize(
    ("component", "changes", "fragments"),
    [
        ("scheduler", {"flow_shift": 5.0}, ("scheduler flow_shift: sketch has 3.0, render has 5.0",)),
        ("scheduler", {"solver_order": 3}, ("scheduler solver_order: sketch has 2, render has 3",)),
        ("transformer", {"text_dim": 128}, ("transformer text_dim: sketch has 64, render has 128",)),
        ("text_encoder", {"d_model": 128}, ("text encoder d_model: sketch has 64, render has 128",)),
        ("vae", {"latents_std": [1.0] * 16}, ("VAE latents_std",)),
    ],
)
def test_incompatible_render_folder_is_refused_by_name(
    a14b: ModelPairConfig, tiny_root: Path, tmp_path: Path, component: str, changes: dict, fragments: tuple[str, ...]
) -> None:
    render = tmp_path / "render"
    shutil.copytree(tiny_root / "render", render)
    cfg_file = render / component / ("scheduler_config.json" if component == "scheduler" else "config.json")
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **changes}))
    _refused(a14b.model_copy(update={"render_path": str(render)}), *fragments)


def test_guidance_scale_2_belongs_to_wan22(tiny_root: Path) -> None:
    with pytest.raises(ValidationError, match=r"guidance_scale_2 applies to family wan2\.2"):
        ModelPairConfig(
            sketch_path=str(tiny_root / "sketch"), render_path=str(tiny_root / "render"), guidance_scale_2=3
        )


# -- handoffs refused at request time --------------------------------------------------------------


def test_handoff_that_does_not_fit_the_render_model_is_refused(wan22_engine: SRDiffusionEngine) -> None:
    """An uploaded handoff may come from any sketch model: the render checks it first and names the misfit."""
    request = wan22_engine.resolve(_request(f"fixed:{BOUNDARY_STEP}"))
    blob = wan22_engine.sketch(request, wan22_engine.encode(request)).to_bytes()

    weightless = get_family("wan2.2")  # what a server can run on an upload before queueing it: no weights
    weightless.bind(wan22_engine.config)

    def refused(mutate, fragment: str) -> None:
        state = HandoffState.from_bytes(blob)
        mutate(state)
        uploaded = HandoffState.from_bytes(state.to_bytes())
        with pytest.raises(IncompatiblePairError, match="handoff does not fit this render model") as caught:
            weightless.check_handoff(uploaded)
        assert fragment in str(caught.value), str(caught.value)
        with pytest.raises(IncompatiblePairError, match="handoff does not fit this render model") as caught:
            wan22_engine.render(uploaded)
        assert fragment in str(caught.value), str(caught.value)

    def ti2v_latents(state: HandoffState) -> None:  # TI2V-5B: 48 channels, 16x spatial compression
        state.latents = torch.randn(1, 48, 5, 4, 4)

    def wider_text(state: HandoffState) -> None:
        state.prompt_embeds = torch.zeros(1, 512, 128)

    def ti2v_schedule(state: HandoffState) -> None:
        other = UniPCMultistepScheduler.from_pretrained(wan22_engine.config.sketch_path, subfolder="scheduler")
        other = UniPCMultistepScheduler.from_config(other.config, flow_shift=5.0)
        other.set_timesteps(STEPS)
        state.timesteps, state.sigmas = other.timesteps, other.sigmas

    refused(ti2v_latents, "latents have shape [1, 48, 5, 4, 4], this render model takes [1, 16, 5, 8, 8]")
    refused(wider_text, "prompt_embeds have shape [1, 512, 128], this render model reads width 64")
    refused(ti2v_schedule, "differ from this render model's schedule for 8 steps")
    weightless.check_handoff(HandoffState.from_bytes(blob))
    good = wan22_engine.render(HandoffState.from_bytes(blob))  # the untouched handoff still renders
    assert good.shape == (1, 16, 5, 8, 8)


# -- CLI -------------------------------------------------------------------------------------------


def test_make_tiny_and_generate_wan22_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SRSERVE_HOME", str(tmp_path / "home"))
    assert cli_main(["make-tiny", "--family", "wan2.2", str(tmp_path / "pair")]) == 0
    folder = tmp_path / "pair" / A14B_DIR
    made = capsys.readouterr().out
    assert f"--model-pair wan2.2 --sketch-model {folder} --render-model {folder / LOW_NOISE_SUBFOLDER}" in made
    small = ["--steps", "8", "--frames", "5", "--height", "32", "--width", "32", "--no-progress", "--threads", "1"]
    out = tmp_path / "fox.mp4"
    # One folder for both: the CLI renders with its low-noise expert; no --switch: the model's boundary.
    args = ["generate", "--prompt", "a fox", "--model-pair", "wan2.2", "--sketch-model", str(folder)]
    assert cli_main([*args, "--render-model", str(folder), "--guidance-scale-2", "3", *small, "--out", str(out)]) == 0
    assert f"switch step: {BOUNDARY_STEP} of 8" in capsys.readouterr().out
    assert read_mp4(out).shape == (5, 32, 32, 3)
    assert cli_main(["generate", "--prompt", "a fox", "--model-pair", "tiny-wan2.2", *small, "--out", str(out)]) == 0
    assert f"switch step: {BOUNDARY_STEP} of 8" in capsys.readouterr().out
    assert (tmp_path / "home" / "tiny" / "wan2.2" / A14B_DIR / "model_index.json").exists()
    assert cli_main(["generate", "--prompt", "a fox", "--switch", "boundary", *small, "--out", str(out)]) == 2
    assert "family wan2.1 has no expert boundary" in capsys.readouterr().err


# -- the planner -----------------------------------------------------------------------------------


def test_derived_profile_plans_two_equal_size_expert_pools() -> None:
    from srserve.planner.profile import Profile
    from srserve.planner.search import PlanSpec, plan
    from srserve.workload.arrivals import PoissonArrivals
    from srserve.workload.mix import RequestMix
    from srserve.workload.plan import SloPolicy

    profile = Profile.read(PROFILE)
    assert profile.source == "derived" and profile.description.startswith("DERIVED, not measured")
    assert profile.model_pair == "wan2.2" and profile.defaults.num_inference_steps == 40
    for kind in profile.kinds.values():
        for costs in kind.shapes.values():
            assert costs.small_step_s == costs.large_step_s  # two experts of one size
    assert profile.role_memory_gib["large"] == profile.role_memory_gib["small"]
    # Both experts with umT5 and the VAE do not fit one 80 GB GPU; one expert per GPU does.
    assert not profile.fits("H100", ("large", "small", "text_encoder", "vae"))
    assert profile.fits("H100", ("large", "text_encoder")) and profile.fits("H100", ("small", "vae"))
    boundary = 13  # of 40 steps: WanPipeline's high-noise share at boundary_ratio 0.875, flow_shift 3.0
    spec = PlanSpec(
        budget={"H100": 8},
        arrival=PoissonArrivals(rate=0.02),
        mix=RequestMix.single(switch=f"fixed:{boundary}"),
        requests=300,
        slo=SloPolicy(scale=3.0),
        slo_reference_kind="H100",
        max_simulated=6,
    )
    results, _ = plan(profile, spec, profile.defaults)
    assert results and all(r.cluster.layout == "disaggregated" for r in results)
    best = results[0].cluster
    assert best.render.replicas > best.sketch.replicas  # the low-noise expert runs 27 of the 40 steps
