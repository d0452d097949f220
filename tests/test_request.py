"""The request model: every violation names its field."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from srserve.engine.denoising.cache import CACHE, CachePolicy, CacheSpec
from srserve.engine.request import (
    SWITCH,
    GenerationRequest,
    RequestDefaults,
    SwitchPolicy,
    capped_switch,
    describe_validation_error,
    error_field,
    resolve_request,
    stored_switch,
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


@pytest.mark.parametrize(
    ("text", "policy", "published"),
    [
        ("fixed:007", SwitchPolicy(kind="fixed", step=7), False),  # spellings the published pattern leaves out
        ("fixed:+5", SwitchPolicy(kind="fixed", step=5), False),
        (" fixed : 5 ", SwitchPolicy(kind="fixed", step=5), False),
        ("fixed:.5e0", SwitchPolicy(kind="fixed", fraction=0.5), False),
        ("adaptive:1e-3", SwitchPolicy(tau=0.001), False),
        ("fixed:1.", SwitchPolicy(kind="fixed", fraction=1.0), True),
        ("load:0.2:3:8", SwitchPolicy(kind="load", tau=0.2, min_step=3, max_step=8), True),
    ],
)
def test_switch_grammar_reads_any_decimal_spelling(text: str, policy: SwitchPolicy, published: bool) -> None:
    assert SwitchPolicy.parse(text) == policy
    assert bool(re.fullmatch(SWITCH.pattern(), text)) == published


@pytest.mark.parametrize("text", ["fixed::5", "fixed:5_0", "fixed:1e-3", "fixed:.", "adaptive:0.1:5", "adaptive:inf"])
def test_switch_grammar_refuses_what_it_does_not_spell(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt="x", switch=text)
    assert describe_validation_error(info.value).startswith(f"switch: cannot parse {text!r}")
    assert error_field(info.value) == "switch"


def test_out_of_range_numbers_are_named_by_the_model() -> None:
    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt="x", switch="adaptive:2.0")
    assert error_field(info.value) == "switch.tau"
    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt="x", cache="render=taylorseer:51")
    assert error_field(info.value) == "cache.render.interval"


def test_cache_grammar_reads_both_forms() -> None:
    both = CachePolicy(kind="first_block", threshold=0.1)
    assert CacheSpec.parse("first_block:0.1") == CacheSpec(sketch=both, render=both)
    assert CacheSpec.parse(" render = mag , sketch = none ") == CacheSpec.parse("sketch=none,render=mag")
    assert CacheSpec.parse("sketch=taylorseer:2").render is None
    assert (
        CACHE.pattern(sketch=["none"], render=["none"])
        == "^(?:(?:none)|sketch=(?:none)(?:,render=(?:none))?|render=(?:none)(?:,sketch=(?:none))?)$"
    )


def test_capped_switch_meets_the_step_count() -> None:
    assert capped_switch({"kind": "fixed", "step": 30}, 20) == {"kind": "fixed", "step": 20}
    assert capped_switch({"kind": "adaptive", "min_step": 9, "max_step": 30}, 6)["min_step"] == 6
    assert capped_switch({"kind": "fixed", "step": 201}, 20)["step"] == 201  # out of range: refused later
    assert capped_switch({"kind": "fixed", "fraction": 0.5}, 20) == {"kind": "fixed", "fraction": 0.5}


def test_a_stored_request_gives_back_its_switch() -> None:
    defaults = RequestDefaults(num_inference_steps=20)
    resolved = resolve_request(GenerationRequest(prompt="a", switch="load:0.2:3:8"), defaults)
    assert stored_switch(resolved.model_dump(mode="json")) == resolved.switch


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
