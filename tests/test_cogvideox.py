"""CogVideoX 5B -> 2B on the tiny pair: parity with CogVideoXPipeline, the SNR-matched handoff, its state.

Runs on two tiny pairs, one with each scheduler CogVideoX ships with: DDIM (deterministic) and
DPM-Solver++ (stochastic: its handoff also carries the previous x0 estimate, the previous
timestep and the generator).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import CogVideoXPipeline

from srserve.cli.main import main as cli_main
from srserve.engine import GenerationRequest, HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.denoising.scheduler_state import SchedulerSnapshot
from srserve.engine.families import IncompatiblePairError
from srserve.engine.families.cogvideox import HANDOFF_EXTRAS_KEY, OLD_X0, TIMESTEP_BACK, CogVideoXFamily
from srserve.engine.models import components
from srserve.engine.tiny import TinyCogVideoXSpec, write_tiny_cogvideox_pair
from srserve.engine.video import read_mp4

STEPS = 8
PROMPT = "a red fox running through snow"
NEGATIVE = "blurry"
SEED = 7
SCHEDULERS = ("ddim", "dpm")


@pytest.fixture(scope="module", params=SCHEDULERS)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelPairConfig:
    root = tmp_path_factory.mktemp(f"tiny-cogvideox-{request.param}")
    write_tiny_cogvideox_pair(root, TinyCogVideoXSpec(scheduler=request.param))
    return ModelPairConfig.tiny_cogvideox(root)


@pytest.fixture(scope="module")
def cog_engine(pair: ModelPairConfig) -> SRDiffusionEngine:
    torch.set_num_threads(1)
    return SRDiffusionEngine(pair)


def _pipeline(path: str) -> CogVideoXPipeline:
    pipe = CogVideoXPipeline.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def large_pipe(pair: ModelPairConfig) -> CogVideoXPipeline:
    """diffusers' own CogVideoXPipeline over the sketch folder: the parity reference."""
    return _pipeline(pair.sketch_path)


def _request(switch: str, steps: int = STEPS) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, num_inference_steps=steps, switch=switch
    )


def _run_pipeline(pipe: CogVideoXPipeline, output_type: str = "latent", **kwargs) -> torch.Tensor | np.ndarray:
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(SEED),
        output_type=output_type,
        max_sequence_length=32,
        **kwargs,
    ).frames


def _scheduler_class(folder: str) -> str:
    return json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())["_class_name"]


def _family(engine: SRDiffusionEngine) -> CogVideoXFamily:
    assert isinstance(engine.family, CogVideoXFamily)
    return engine.family


def test_large_only_equals_cogvideox_pipeline(cog_engine: SRDiffusionEngine, large_pipe: CogVideoXPipeline) -> None:
    result = cog_engine.generate(_request(f"fixed:{STEPS}"))
    assert result.switch_step == STEPS
    assert torch.equal(result.latents, _run_pipeline(large_pipe))
    assert np.array_equal(result.frames, _run_pipeline(large_pipe, output_type="np")[0])


def test_large_only_with_dynamic_cfg_equals_pipeline(pair: ModelPairConfig, large_pipe: CogVideoXPipeline) -> None:
    engine = SRDiffusionEngine(pair.model_copy(update={"use_dynamic_cfg": True}))
    result = engine.generate(_request(f"fixed:{STEPS}"), through_bytes=False)
    reference = _run_pipeline(large_pipe, use_dynamic_cfg=True)
    assert torch.equal(result.latents, reference)
    assert not torch.equal(reference, _run_pipeline(large_pipe))  # the schedule did change something


def test_small_only_equals_render_pipeline(pair: ModelPairConfig, cog_engine: SRDiffusionEngine) -> None:
    """Pure noise has SNR 0 on both schedules: t' is the render schedule's own start, the gain is 1."""
    result = cog_engine.generate(_request("fixed:0"))
    match = _family(cog_engine).snr_match
    reference = _run_pipeline(_pipeline(pair.render_path))
    # render() returns latents in the sketch's space (one decode scale); this is that documented map.
    assert torch.equal(result.latents, reference * (match.sketch_scale / match.render_scale))


def test_handoff_through_bytes_into_fresh_models_equals_in_process(
    pair: ModelPairConfig, cog_engine: SRDiffusionEngine
) -> None:
    k = 3
    in_process = cog_engine.generate(_request(f"fixed:{k}"), through_bytes=False)
    sketcher = SRDiffusionEngine(pair, roles={Role.TEXT, Role.SKETCH})
    request = sketcher.resolve(_request(f"fixed:{k}"))
    blob = sketcher.sketch(request, sketcher.encode(request)).to_bytes()
    components.clear()  # the render side loads its own instances from disk
    renderer = SRDiffusionEngine(pair, roles={Role.RENDER, Role.DECODE})
    assert renderer.render_model is not cog_engine.render_model
    latents = renderer.render(HandoffState.from_bytes(blob))
    assert torch.equal(latents, in_process.latents)
    assert np.array_equal(renderer.decode(latents), in_process.frames)


def test_adaptive_switch_hands_off_through_bytes_exactly(cog_engine: SRDiffusionEngine) -> None:
    request = _request("adaptive", steps=10)
    through = cog_engine.generate(request)
    direct = cog_engine.generate(request, through_bytes=False)
    assert 1 <= through.switch_step <= 6 and through.switch_step == direct.switch_step
    assert torch.equal(through.latents, direct.latents)


def test_handoff_latent_is_the_pipelines_latent_rescaled(
    cog_engine: SRDiffusionEngine, large_pipe: CogVideoXPipeline
) -> None:
    """The sketch's latent after k steps is CogVideoXPipeline's, times c; the record names t and t'."""
    k = 3
    captured: dict[str, torch.Tensor] = {}

    def capture(pipe, i, t, kwargs):  # CogVideoXPipeline's step-end callback
        if i == k - 1:
            captured["latents"] = kwargs["latents"].clone()
        return {}

    _run_pipeline(large_pipe, callback_on_step_end=capture)
    request = cog_engine.resolve(_request(f"fixed:{k}"))
    state = cog_engine.sketch(request, cog_engine.encode(request))
    info = state.extras[HANDOFF_EXTRAS_KEY]
    match = _family(cog_engine).snr_match
    large_pipe.scheduler.set_timesteps(STEPS)
    assert info["sketch_timestep"] == int(large_pipe.scheduler.timesteps[k])
    assert info["render_timestep"] == match.render_timestep(info["sketch_timestep"]) == int(state.timesteps[k])
    assert info["latent_gain"] == match.latent_gain(info["sketch_timestep"], info["render_timestep"])
    assert torch.equal(state.latents, captured["latents"] * info["latent_gain"])


def _schedules(pair: ModelPairConfig) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Both alphas_cumprod, built by diffusers from the folders, and both VAE scaling factors."""
    family = CogVideoXFamily()
    sketch = family.load_scheduler(pair.sketch_path).alphas_cumprod.double()
    render = family.load_scheduler(pair.render_path).alphas_cumprod.double()
    scales = [
        json.loads((Path(p) / "vae" / "config.json").read_text())["scaling_factor"]
        for p in (pair.sketch_path, pair.render_path)
    ]
    return sketch, render, scales[0], scales[1]


@pytest.mark.parametrize("steps", [8, 20, 50])
def test_conversion_preserves_snr(pair: ModelPairConfig, cog_engine: SRDiffusionEngine, steps: int) -> None:
    """s2^2 SNR2(t') = s5^2 SNR5(t) up to integer rounding; the noise keeps the variance 2B expects at t'."""
    ab5, ab2, s5, s2 = _schedules(pair)
    assert (s5, s2) == (0.7, 1.15258426)
    assert not torch.equal(ab5, ab2)  # snr_shift_scale 1.0 vs 3.0
    log_snr2 = torch.log(ab2) - torch.log1p(-ab2)
    family = _family(cog_engine)
    stride = 1000 // steps
    for k in range(steps):
        plan = family.render_plan(k, steps)
        t, t2 = plan.sketch_timestep, plan.render_timestep
        target = math.log(s5**2 / s2**2) + math.log(ab5[t] / (1 - ab5[t])) if ab5[t] > 0 else -math.inf
        if math.isinf(target):  # pure noise: SNR 0 on both schedules
            assert ab2[t2] == 0 and plan.latent_gain == 1.0
        else:
            error = abs(float(log_snr2[t2]) - target)
            assert error == pytest.approx(float((log_snr2 - target).abs().nan_to_num(math.inf).min()), abs=1e-12)
            local_gap = max(
                abs(float(log_snr2[min(t2 + 1, 999)] - log_snr2[t2])), abs(float(log_snr2[t2] - log_snr2[t2 - 1]))
            )
            assert error <= local_gap / 2 + 1e-12
            # the signal coefficient matches up to that rounding: c sqrt(ab5) s5 vs sqrt(ab2) s2
            signal_ratio = plan.latent_gain * math.sqrt(ab5[t]) * s5 / (math.sqrt(ab2[t2]) * s2)
            assert abs(math.log(signal_ratio)) <= local_gap / 2 + 1e-12
        assert plan.latent_gain**2 * (1 - float(ab5[t])) == pytest.approx(1 - float(ab2[t2]), rel=1e-12)
        # the render schedule: N - k steps from t', each landing where the next begins, the last on clean
        rest = plan.timesteps[k:]
        assert len(plan.timesteps) == steps and int(rest[0]) == t2
        assert torch.equal(rest[:-1] - stride, rest[1:]) and int(rest[-1]) - stride < 0


def test_dpm_handoff_carries_x0_previous_timestep_and_generator(cog_engine: SRDiffusionEngine) -> None:
    if _scheduler_class(cog_engine.config.sketch_path) != "CogVideoXDPMScheduler":
        pytest.skip("the DPM scheduler's state; the DDIM pair has none")
    k = 3
    request = cog_engine.resolve(_request(f"fixed:{k}"))
    state = cog_engine.sketch(request, cog_engine.encode(request))
    match = _family(cog_engine).snr_match
    tensors = state.scheduler.tensors
    assert set(tensors) == {OLD_X0, TIMESTEP_BACK}
    assert tensors[OLD_X0].shape == state.latents.shape
    sketch_scheduler = CogVideoXFamily().load_scheduler(cog_engine.config.sketch_path)
    sketch_scheduler.set_timesteps(STEPS)
    sketch_back = int(sketch_scheduler.timesteps[k - 1])
    assert state.extras[HANDOFF_EXTRAS_KEY]["sketch_timestep_back"] == sketch_back
    assert int(tensors[TIMESTEP_BACK]) == match.render_timestep(sketch_back)
    exact = cog_engine.render(state)

    def without(*names: str) -> SchedulerSnapshot:
        values = {n: ({"value": "__absent__"} if n in names else v) for n, v in state.scheduler.values.items()}
        kept = {n: t for n, t in tensors.items() if n not in names}
        return SchedulerSnapshot(state.scheduler.class_name, kept, values)

    fresh_generator = torch.Generator().manual_seed(SEED).get_state()
    unmapped_back = {**tensors, TIMESTEP_BACK: torch.tensor(sketch_back)}
    unscaled_x0 = {**tensors, OLD_X0: tensors[OLD_X0] / match.clean_gain}
    variants = {
        "no x0 history": replace(state, scheduler=without(OLD_X0, TIMESTEP_BACK)),
        "fresh generator": replace(state, generator_state=fresh_generator),
        "previous timestep not remapped": replace(
            state, scheduler=SchedulerSnapshot(state.scheduler.class_name, unmapped_back, state.scheduler.values)
        ),
        "x0 history not rescaled": replace(
            state, scheduler=SchedulerSnapshot(state.scheduler.class_name, unscaled_x0, state.scheduler.values)
        ),
    }
    for name, variant in variants.items():
        other = cog_engine.render(variant)
        assert (other - exact).abs().max().item() > 1e-4, name
    assert torch.equal(cog_engine.render(HandoffState.from_bytes(state.to_bytes())), exact)


def test_render_refuses_a_handoff_it_did_not_plan(cog_engine: SRDiffusionEngine) -> None:
    request = cog_engine.resolve(_request("fixed:3"))
    state = cog_engine.sketch(request, cog_engine.encode(request))
    shifted = state.timesteps.clone()
    shifted[3] -= 1
    with pytest.raises(ValueError, match="timesteps differ"):
        cog_engine.render(replace(state, timesteps=shifted))
    with pytest.raises(ValueError, match="not converted"):
        cog_engine.render(replace(state, extras={}))
    if TIMESTEP_BACK in state.scheduler.tensors:
        bad = {**state.scheduler.tensors, TIMESTEP_BACK: torch.tensor(5000)}
        snap = SchedulerSnapshot(state.scheduler.class_name, bad, state.scheduler.values)
        with pytest.raises(ValueError, match="timestep_back"):
            cog_engine.render(replace(state, scheduler=snap))


def _edited_copy(pair: ModelPairConfig, tmp_path: Path, component: str, **changes) -> ModelPairConfig:
    render = tmp_path / "render"
    shutil.copytree(pair.render_path, render)
    cfg_file = render / component / ("scheduler_config.json" if component == "scheduler" else "config.json")
    cfg = json.loads(cfg_file.read_text())
    cfg.update(changes)
    cfg_file.write_text(json.dumps(cfg))
    return pair.model_copy(update={"render_path": str(render)})


@pytest.mark.parametrize(
    ("component", "changes", "message"),
    [
        ("transformer", {"in_channels": 32}, "transformer mismatch on 'in_channels'"),
        ("transformer", {"patch_size": 4}, "transformer mismatch on 'patch_size'"),
        ("transformer", {"text_embed_dim": 128}, "transformer mismatch on 'text_embed_dim'"),
        ("transformer", {"max_text_seq_length": 226}, "transformer mismatch on 'max_text_seq_length'"),
        ("transformer", {"_class_name": "WanTransformer3DModel"}, "not a CogVideoXTransformer3DModel"),
        ("transformer", {"patch_size_t": 2}, "CogVideoX 1.5"),
        ("vae", {"block_out_channels": [8, 16, 16, 16]}, "VAE mismatch on 'block_out_channels'"),
        ("vae", {"scaling_factor": None}, "render VAE config has no positive scaling_factor"),
        ("scheduler", {"_class_name": "UniPCMultistepScheduler"}, "not supported for CogVideoX"),
    ],
)
def test_incompatible_pair_is_refused_by_name(
    pair: ModelPairConfig, tmp_path: Path, component: str, changes: dict, message: str
) -> None:
    with pytest.raises(IncompatiblePairError, match=message):
        SRDiffusionEngine(_edited_copy(pair, tmp_path, component, **changes))


def test_mixed_schedulers_and_other_mismatches_are_refused(pair: ModelPairConfig, tmp_path: Path, tiny_root) -> None:
    other = {"CogVideoXDPMScheduler": "CogVideoXDDIMScheduler", "CogVideoXDDIMScheduler": "CogVideoXDPMScheduler"}[
        _scheduler_class(pair.sketch_path)
    ]
    with pytest.raises(IncompatiblePairError, match="scheduler mismatch on '_class_name'"):
        SRDiffusionEngine(_edited_copy(pair, tmp_path, "scheduler", _class_name=other))
    with pytest.raises(
        IncompatiblePairError, match="max_sequence_length 64 != the transformers' max_text_seq_length 32"
    ):
        SRDiffusionEngine(pair.model_copy(update={"max_sequence_length": 64}))
    wan_as_cogvideox = pair.model_copy(update={"sketch_path": str(tiny_root / "sketch")})
    with pytest.raises(IncompatiblePairError, match="not a CogVideoXTransformer3DModel"):
        SRDiffusionEngine(wan_as_cogvideox)
    with pytest.raises(IncompatiblePairError, match="use_dynamic_cfg"):
        SRDiffusionEngine(ModelPairConfig.tiny(tiny_root, use_dynamic_cfg=True))


def test_cli_make_tiny_and_generate_cogvideox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SRSERVE_HOME", str(tmp_path / "home"))
    assert cli_main(["make-tiny", "--family", "cogvideox", str(tmp_path / "pair")]) == 0
    assert "--model-pair cogvideox" in capsys.readouterr().out
    for folder in ("sketch", "render"):
        index = json.loads((tmp_path / "pair" / folder / "model_index.json").read_text())
        assert index["_class_name"] == "CogVideoXPipeline"
    out = tmp_path / "fox.mp4"
    args = ["generate", "--prompt", "a fox", "--model-pair", "tiny-cogvideox", "--switch", "fixed:4", "--steps", "8"]
    assert cli_main([*args, "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    assert "switch step: 4 of 8" in capsys.readouterr().out
    assert (tmp_path / "home" / "tiny" / "cogvideox" / "sketch" / "model_index.json").exists()
    assert read_mp4(out).shape == (9, 64, 64, 3)
