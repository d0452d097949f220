"""Few-step schedules (srserve.engine.denoising.schedule): bit-for-bit parity with diffusers' WanPipeline running the
same scheduler and sigmas, one transformer forward per step at guidance 1, the handoff of a few-step
request through its bytes, `adaptive` at 4 steps, and the refusals that name their field."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline
from pydantic import ValidationError

from srserve.cli.main import main as cli_main
from srserve.engine import GenerationRequest, HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.denoising.schedule import ScheduleBounds
from srserve.engine.families import IncompatiblePairError, check_pair_schedule, check_schedule, get_family
from srserve.engine.handoff import FORMAT_NAME, FORMAT_VERSION, HandoffFormatError
from srserve.engine.models import components
from srserve.engine.request import RequestDefaults, describe_validation_error, resolve_request
from srserve.planner.profile import Profile

PROMPT = "a kite over a beach"
SEED = 3
TIMESTEPS = [1000, 750, 500, 250]  # a distilled 4-step list (LightX2V's Wan2.1 step distillation)
SIGMAS = [t / 1000 for t in TIMESTEPS]  # what `timesteps` means: sigmas t / 1000, before the shift
SHIFT = 5.0


def _request(switch: str, scheduler: str = "euler", **fields: Any) -> GenerationRequest:
    fields.setdefault("timesteps", TIMESTEPS)
    return GenerationRequest(
        prompt=PROMPT, seed=SEED, guidance_scale=1.0, scheduler=scheduler, shift=SHIFT, switch=switch, **fields
    )


def _pinned(scheduler: Any) -> Any:
    """`scheduler` running SIGMAS: WanPipeline.__call__ takes no `sigmas=` and calls
    `scheduler.set_timesteps(num_inference_steps, device=...)`, so the sigmas are bound to that call, as
    diffusers' retrieve_timesteps passes them to the pipelines that take them (an array: UniPC's flow
    branch computes on what it is given)."""
    scheduler.set_timesteps = functools.partial(scheduler.set_timesteps, sigmas=np.asarray(SIGMAS))
    return scheduler


def _euler() -> FlowMatchEulerDiscreteScheduler:
    return _pinned(FlowMatchEulerDiscreteScheduler(shift=SHIFT))


def _pipe(wan_pipe: WanPipeline, scheduler: Any, transformer: Any, small: Any = None, k: int = 0) -> WanPipeline:
    """WanPipeline over the tiny folders' components; with `small`, transformer_2 from the step k on."""
    boundary = None
    if small is not None:
        scheduler.set_timesteps(len(TIMESTEPS))
        ts = scheduler.timesteps
        boundary = float(ts[k - 1] + ts[k]) / 2 / scheduler.config.num_train_timesteps
    pipe = WanPipeline(
        tokenizer=wan_pipe.tokenizer,
        text_encoder=wan_pipe.text_encoder,
        vae=wan_pipe.vae,
        transformer=transformer,
        transformer_2=small,
        scheduler=scheduler,
        boundary_ratio=boundary,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe: WanPipeline) -> torch.Tensor:
    return pipe(
        prompt=PROMPT,
        height=64,
        width=64,
        num_frames=17,
        num_inference_steps=len(TIMESTEPS),
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(SEED),
        output_type="latent",
    ).frames


def test_large_only_euler_equals_wan_pipeline_with_one_forward_per_step(engine, wan_pipe) -> None:
    calls: list[int] = []
    handle = engine.sketch_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = engine.generate(_request("fixed:4"))
    finally:
        handle.remove()
    assert result.switch_step == 4 == result.num_steps
    assert len(calls) == 4  # guidance 1: no unconditional branch
    assert torch.equal(result.latents, _latents(_pipe(wan_pipe, _euler(), wan_pipe.transformer)))


@pytest.mark.parametrize("k", [1, 2])
def test_fixed_split_equals_two_transformer_pipeline(engine, wan_pipe, k: int) -> None:
    reference = _latents(_pipe(wan_pipe, _euler(), wan_pipe.transformer, engine.render_model, k))
    result = engine.generate(_request(f"fixed:{k}"))
    assert result.switch_step == k
    assert torch.equal(result.latents, reference)


def test_small_only_equals_pipeline(engine, wan_pipe) -> None:
    result = engine.generate(_request("fixed:0", sigmas=SIGMAS, timesteps=None))
    assert result.switch_step == 0
    assert torch.equal(result.latents, _latents(_pipe(wan_pipe, _euler(), engine.render_model)))


def test_unipc_with_explicit_sigmas_equals_pipeline(engine, wan_pipe) -> None:
    scheduler = _pinned(UniPCMultistepScheduler.from_config(wan_pipe.scheduler.config, flow_shift=SHIFT))
    result = engine.generate(_request("fixed:4", scheduler="unipc"))
    assert torch.equal(result.latents, _latents(_pipe(wan_pipe, scheduler, wan_pipe.transformer)))


def test_handoff_of_a_few_step_request_renders_from_bytes(tiny_config, engine, wan_pipe) -> None:
    k = 2
    reference = _latents(_pipe(wan_pipe, _euler(), wan_pipe.transformer, engine.render_model, k))
    sketcher = SRDiffusionEngine(tiny_config, roles={Role.TEXT, Role.SKETCH})
    request = sketcher.resolve(_request(f"fixed:{k}"))
    state = sketcher.sketch(request, sketcher.encode(request))
    assert state.scheduler.class_name == "FlowMatchEulerDiscreteScheduler"
    assert state.negative_prompt_embeds is None  # guidance 1: no negative prompt encoded
    blob = state.to_bytes()
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(json.loads(blob[8 : 8 + size])["__metadata__"][FORMAT_NAME])
    assert header["version"] == FORMAT_VERSION and header["request"]["timesteps"] == TIMESTEPS
    components.clear()  # the render side loads its own instances from disk
    renderer = SRDiffusionEngine(tiny_config, roles={Role.RENDER})
    assert torch.equal(renderer.render(HandoffState.from_bytes(blob)), reference)

    older = blob.replace(f'\\"version\\": {FORMAT_VERSION}'.encode(), b'\\"version\\": 2', 1)
    with pytest.raises(HandoffFormatError, match="version 2 handoff cannot carry a request schedule"):
        HandoffState.from_bytes(older)


def test_adaptive_at_four_steps_hands_over_at_its_upper_bound(engine) -> None:
    """Default bounds over 4 steps are round(0.4) = 0 .. round(2.4) = 2, and the rule's first s_k needs three
    predictions: so `adaptive` at 4 steps is `fixed:2` (docs/engine.md, "Few-step schedules")."""
    adaptive = engine.generate(_request("adaptive"))
    assert adaptive.switch_step == 2
    assert torch.equal(adaptive.latents, engine.generate(_request("fixed:2")).latents)


def test_pair_defaults_make_a_few_step_pair(tiny_config) -> None:
    defaults = RequestDefaults(
        height=64, width=64, num_frames=17, num_inference_steps=4, guidance_scale=1.0, scheduler="euler",
        timesteps=TIMESTEPS, shift=SHIFT,
    )  # fmt: skip
    bounds = ScheduleBounds(schedulers=["euler"], min_steps=2, max_steps=8, max_guidance_scale=1.0)
    config = ModelPairConfig.model_validate({**tiny_config.model_dump(), "defaults": defaults, "schedule": bounds})
    pair = SRDiffusionEngine(config, roles=set())
    plain = pair.resolve(GenerationRequest(prompt=PROMPT))
    assert (plain.scheduler, plain.timesteps, plain.shift, plain.guidance_scale) == ("euler", TIMESTEPS, SHIFT, 1.0)
    assert plain.num_inference_steps == 4
    other = pair.resolve(GenerationRequest(prompt=PROMPT, num_inference_steps=6))  # its own count: spaced steps
    assert other.timesteps is None and other.scheduler == "euler" and other.num_inference_steps == 6
    for fields, needle in [
        ({"scheduler": "unipc"}, "scheduler: 'unipc' is not allowed for this model (allowed: euler)"),
        ({"num_inference_steps": 12}, "num_inference_steps: 12 is outside this model's bounds (2..8)"),
        ({"guidance_scale": 5.0}, "guidance_scale: 5.0 is above this model's maximum 1.0"),
    ]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            pair.resolve(GenerationRequest(prompt=PROMPT, **fields))
    with pytest.raises(ValidationError, match="defaults outside the pair's schedule bounds: scheduler"):
        ModelPairConfig.model_validate({**config.model_dump(), "schedule": {"schedulers": ["unipc"]}})
    with pytest.raises(ValidationError, match="4 values for num_inference_steps 50"):
        RequestDefaults(timesteps=TIMESTEPS)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"timesteps": [1000, 500, 500, 250]}, "timesteps: must be strictly decreasing"),
        ({"sigmas": [0.5, 0.9]}, "sigmas: must be strictly decreasing"),
        ({"timesteps": TIMESTEPS, "num_inference_steps": 8}, "timesteps: 4 values for num_inference_steps 8"),
        ({"timesteps": TIMESTEPS, "sigmas": SIGMAS}, "sigmas: set either timesteps or sigmas, not both"),
        ({"timesteps": [1001, 500]}, "timesteps.0: Input should be less than or equal to 1000"),
        ({"scheduler": "ddim"}, "scheduler: Input should be 'unipc' or 'euler'"),
        ({"shift": 0}, "shift: Input should be greater than 0"),
        ({"timesteps": TIMESTEPS, "cache": "first_block"}, "cache: a sketch 'first_block' cache reuses work"),
        ({"shift": 5.0, "cache": "render=mag"}, "cache: the render 'mag' cache's ratios are calibrated"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(fields: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt=PROMPT, **fields)
    assert needle in describe_validation_error(info.value)


def test_cogvideox_refuses_few_step_fields_naming_why() -> None:
    config = ModelPairConfig.tiny_cogvideox(write=False)
    family = get_family("cogvideox")

    request = resolve_request(GenerationRequest(prompt=PROMPT, scheduler="euler"), config.defaults)
    with pytest.raises(ValueError, match="scheduler: the cogvideox family runs only its folder's schedule"):
        check_schedule(family, config, request)
    check_schedule(family, config, resolve_request(GenerationRequest(prompt=PROMPT), config.defaults))
    few_step_defaults = {**config.defaults.model_dump(), "shift": 3.0}
    bad = ModelPairConfig.model_validate({**config.model_dump(), "defaults": few_step_defaults})

    with pytest.raises(IncompatiblePairError, match="defaults: shift: the cogvideox family"):
        check_pair_schedule(family, bad)


def test_derived_few_step_profiles_are_what_their_script_derives() -> None:
    """Each committed few-step profile is the script's output, marked derived, with the few-step defaults,
    every step half its base profile's CFG step."""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("derive_few_step", root / "benchmarks" / "derive_few_step_profile.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert set(script.PAIRS) == {"wan2.1", "wan2.2", "wan2.1-i2v"}
    for pair, (base_name, out_name, published) in script.PAIRS.items():
        base = Profile.read(script.RESULTS / base_name)
        committed = Profile.read(root / "benchmarks" / "results" / out_name)
        assert committed == script.derive(base, published, base_name), pair
        assert committed.source == "derived" and committed.description.startswith("DERIVED, not measured")
        assert committed.model_pair == base.model_pair == pair
        assert (committed.defaults.num_inference_steps, committed.defaults.guidance_scale) == (4, 1.0)
        assert set(committed.kinds) == set(base.kinds)
        for kind, costs in committed.kinds.items():
            for shape, few in costs.shapes.items():
                # one forward a step instead of CFG's two
                assert few.large_step_s == base.kinds[kind].shapes[shape].large_step_s / 2, (pair, kind, shape)
    wan22 = Profile.read(root / "benchmarks" / "results" / "profile_wan22_few_step_derived.json")
    assert all(c.detail["boundary_switch_step"] == 2 for k in wan22.kinds.values() for c in k.shapes.values())


def test_cli_refuses_a_bad_schedule_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "--prompt", PROMPT, "--scheduler", "euler", "--shift", "5", "--no-progress"]
    assert cli_main([*args, "--timesteps", "1000,750,800"]) == 2
    assert "timesteps: must be strictly decreasing" in capsys.readouterr().err
    assert cli_main([*args, "--timesteps", "1000,750", "--steps", "4"]) == 2
    assert "timesteps: 2 values for num_inference_steps 4" in capsys.readouterr().err
