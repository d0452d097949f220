"""The request model: every violation names its field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from srserve.engine.request import (
    GenerationRequest,
    RequestDefaults,
    SwitchPolicy,
    describe_validation_error,
    resolve_request,
)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt: prompt must contain non-whitespace text"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"height": 63}, "height: must be a multiple of 16"),
        ({"width": 100}, "width: must be a multiple of 16"),
        ({"width": 4096}, "width"),
        ({"num_frames": 6}, "num_frames: must be of the form 4k+1"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 1000}, "num_inference_steps"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"switch": "fixed:30", "num_inference_steps": 20}, "switch: step 30 is beyond num_inference_steps (20)"),
        ({"switch": "sideways"}, "switch: cannot parse 'sideways'"),
        ({"switch": "fixed:1.5"}, "switch"),
        ({"switch": "adaptive:0.01:9:3"}, "min_step (9) > max_step (3)"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_violations_name_the_field(fields: dict, needle: str) -> None:
    data = {"prompt": "a cat"} | fields
    with pytest.raises(ValidationError) as info:
        GenerationRequest(**data)
    assert needle in describe_validation_error(info.value)


def test_switch_policy_parsing() -> None:
    assert SwitchPolicy.parse("fixed:10") == SwitchPolicy(kind="fixed", step=10)
    assert SwitchPolicy.parse("fixed:0.3").fixed_step(50) == 15
    assert SwitchPolicy.parse("adaptive") == SwitchPolicy()
    adaptive = SwitchPolicy.parse("adaptive:0.02:5:30")
    assert (adaptive.tau, adaptive.bounds(50)) == (0.02, (5, 30))
    assert SwitchPolicy.parse("adaptive").bounds(50) == (5, 30)
    assert SwitchPolicy.parse(str(adaptive)) == adaptive


def test_resolve_fills_defaults_and_revalidates() -> None:
    defaults = RequestDefaults(height=64, width=64, num_frames=17, num_inference_steps=20)
    resolved = resolve_request(GenerationRequest(prompt="a"), defaults)
    assert (resolved.height, resolved.width, resolved.num_frames, resolved.num_inference_steps) == (64, 64, 17, 20)
    with pytest.raises(ValidationError, match="beyond num_inference_steps"):
        resolve_request(GenerationRequest(prompt="a", switch="fixed:25"), defaults)


@given(
    height=st.integers(-100, 3000),
    frames=st.integers(-10, 300),
    steps=st.integers(-5, 300),
    switch_step=st.integers(0, 300),
    seed=st.integers(-(2**64), 2**64),
)
def test_request_model_accepts_exactly_the_valid_space(height, frames, steps, switch_step, seed) -> None:
    valid = (
        16 <= height <= 2048
        and height % 16 == 0
        and 1 <= frames <= 257
        and (frames - 1) % 4 == 0
        and 1 <= steps <= 200
        and switch_step <= steps
        and switch_step <= 200
        and 0 <= seed < 2**63
    )
    try:
        GenerationRequest(
            prompt="p",
            height=height,
            num_frames=frames,
            num_inference_steps=steps,
            switch=f"fixed:{switch_step}",
            seed=seed,
        )
    except ValidationError as exc:
        assert not valid, describe_validation_error(exc)
    else:
        assert valid
