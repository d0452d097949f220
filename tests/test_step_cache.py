"""Step caches per stage (engine, no Ray): off is exact, each kind runs sketch -> handoff bytes ->
render and really skips compute, nothing leaks across stages or jobs, bad fields name themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from srserve.engine import GenerationRequest
from srserve.engine.denoising.cache import CachePolicy, CacheSpec, mag_ratios_for, with_ratios_file
from srserve.engine.denoising.mag_calibration import calibrate, write_ratios
from srserve.engine.handoff import HandoffState
from srserve.engine.request import describe_validation_error
from srserve.serving.control.request_cache import (
    CacheLimits,
    CacheRefused,
    allowed_kinds,
    cache_pattern,
    resolve_cache,
)

BASE = {"prompt": "a lighthouse in a storm", "negative_prompt": "blur", "num_inference_steps": 12, "seed": 7}
SWITCH = "fixed:5"


class ComputeCounter:
    """Counts full computations of each model's last block feed-forward (inside any hooked module)."""

    def __init__(self, *models: torch.nn.Module) -> None:
        self.calls = 0
        self._handles = [m.blocks[-1].ffn.net[0].register_forward_hook(self._hit) for m in models]

    def _hit(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@pytest.fixture(scope="module")
def reference(engine):
    return engine.generate(GenerationRequest(**BASE, switch=SWITCH))


@pytest.fixture(scope="module")
def ratios_file(engine, tmp_path_factory) -> str:
    data = calibrate(engine, GenerationRequest(**BASE))
    return str(write_ratios(data, tmp_path_factory.mktemp("mag") / "ratios.json"))


def _run(engine, cache: str | CacheSpec, ratios: str | None = None):
    request = GenerationRequest(**BASE, switch=SWITCH, cache=cache)
    if ratios is not None:
        request = request.model_copy(update={"cache": with_ratios_file(request.cache, ratios)})
    counter = ComputeCounter(engine.sketch_model, engine.render_model)
    try:
        return engine.generate(request, through_bytes=True), counter.calls
    finally:
        counter.close()


@pytest.mark.parametrize("cache", ["none", "sketch=none,render=none", CacheSpec()])
def test_cache_off_is_bit_identical(engine, reference, cache) -> None:
    result, calls = _run(engine, cache)
    assert torch.equal(result.latents, reference.latents)
    assert result.video == reference.video
    assert calls == 2 * BASE["num_inference_steps"]  # every step, both CFG branches, computed


@pytest.mark.parametrize(
    "cache", ["first_block:0.2", "taylorseer:2", "mag:0.5", "sketch=taylorseer:2,render=first_block:0.2"]
)
def test_each_cache_kind_runs_through_sketch_handoff_and_render(engine, reference, ratios_file, cache) -> None:
    result, calls = _run(engine, cache, ratios_file)
    assert calls < 2 * BASE["num_inference_steps"], "the cache skipped no computation"
    assert not torch.equal(result.latents, reference.latents)
    assert torch.isfinite(result.latents).all()
    assert result.switch_step == 5 and result.handoff_bytes > 0
    state = HandoffState.from_bytes(result.handoff)  # the policy travels with the request, nothing else
    assert state.request.cache == with_ratios_file(GenerationRequest(**BASE, cache=cache).cache, ratios_file)
    for model in (engine.sketch_model, engine.render_model):
        assert not model.is_cache_enabled  # the stage took its hooks (and their state) with it
    again, _ = _run(engine, cache, ratios_file)
    assert torch.equal(again.latents, result.latents)  # no state leaks into the next job


def test_sketch_only_cache_leaves_the_render_exact(engine, reference) -> None:
    """With the render uncached, the render continues the cached sketch's handoff exactly as usual."""
    cached, _ = _run(engine, "sketch=first_block:0.2")
    state = HandoffState.from_bytes(cached.handoff)
    plain = state.request.model_copy(update={"cache": None})
    state.request = plain
    assert torch.equal(engine.render(state), cached.latents)


def test_mag_calibration_file(ratios_file) -> None:
    data = json.loads(Path(ratios_file).read_text())
    assert data["format"] == "srserve.mag_ratios" and data["num_inference_steps"] == 12
    assert len(data["sketch"]) == len(data["render"]) == 12
    assert data["sketch"][0] == 1.0 and all(r > 0 for r in data["sketch"] + data["render"])
    assert len(mag_ratios_for(ratios_file, "render", 30)) == 30  # resampled to another step count
    config = CachePolicy(kind="mag", ratios_file=ratios_file).to_diffusers(12, first_step=5, model="render")
    assert config.num_inference_steps == 7 and len(config.mag_ratios) == 7  # the render's own steps


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"cache": "first_block:2"}, "cache"),
        ({"cache": "turbo"}, "cache"),
        ({"cache": "sketch=first_block,sketch=none"}, "cache"),
        ({"cache": {"sketch": {"kind": "none", "threshold": 0.1}}}, "threshold does not apply"),
        ({"cache": {"render": {"kind": "taylorseer", "interval": 0}}}, "cache.render.interval"),
    ],
)
def test_invalid_cache_fields_are_refused_naming_the_field(fields, named) -> None:
    with pytest.raises(ValidationError) as err:
        GenerationRequest(prompt="x", **fields)
    assert named in describe_validation_error(err.value)


def test_mag_without_ratios_is_refused_when_it_runs(engine) -> None:
    with pytest.raises(ValueError, match="ratios_file"):
        engine.generate(GenerationRequest(**BASE, switch=SWITCH, cache="mag"))


def test_request_caches_within_the_operators_limits(tmp_path) -> None:
    mag = CachePolicy(kind="mag", ratios_file=str(tmp_path / "r.json"))
    strict = (CachePolicy(), CacheLimits())
    open_ = (CachePolicy(kind="first_block", threshold=0.05), CacheLimits(kinds=["none", "taylorseer"]))
    assert resolve_cache(None, strict, strict) is None  # nothing cached: requests stay as before
    spec = resolve_cache(None, open_, strict)
    assert spec.sketch.kind == "first_block" and spec.render.kind == "none"
    spec = resolve_cache(CacheSpec.parse("sketch=taylorseer:3"), open_, strict)
    assert spec.sketch == CachePolicy(kind="taylorseer", interval=3)
    assert resolve_cache(CacheSpec.parse("sketch=first_block:0.3"), open_, strict).sketch.threshold == 0.3
    with pytest.raises(CacheRefused) as err:
        resolve_cache(CacheSpec.parse("render=first_block"), open_, strict)
    assert err.value.param == "cache.render" and "not allowed" in str(err.value)
    with pytest.raises(CacheRefused, match="calibrated MagCache ratios"):
        resolve_cache(CacheSpec.parse("render=mag"), open_, (CachePolicy(), CacheLimits(kinds=["mag"])))
    spec = resolve_cache(CacheSpec.parse("sketch=mag:0.1"), (mag, CacheLimits()), strict)  # the pool's file
    assert spec.sketch.ratios_file == mag.ratios_file and spec.sketch.threshold == 0.1
    client_file = CacheSpec(sketch=CachePolicy(kind="first_block", threshold=0.1))
    assert resolve_cache(client_file, open_, strict).sketch.ratios_file is None
    assert allowed_kinds(*open_) == ["none", "first_block", "taylorseer"]
    assert allowed_kinds(CachePolicy(), CacheLimits(kinds=["mag"])) == ["none"]
    assert allowed_kinds(*(mag, CacheLimits())) == ["none", "mag"]


def test_a_deployments_schema_states_its_cache_kinds_exactly() -> None:
    """The published `cache` grammar accepts a text exactly when the pools' limits do."""
    import re

    sketch = (CachePolicy(kind="first_block"), CacheLimits(kinds=["none", "taylorseer"]))
    render = (CachePolicy(kind="mag", ratios_file="/r.json"), CacheLimits())
    pattern = cache_pattern(sketch, render)
    texts = ["none", "first_block", "mag", "taylorseer:3", "sketch=taylorseer:2", "render=mag:0.2"]
    texts += ["sketch=none,render=mag", "render=none,sketch=first_block:0.1", "sketch=mag", "render=taylorseer"]
    for text in texts:
        try:
            resolve_cache(CacheSpec.parse(text), sketch, render)
            accepted = True
        except CacheRefused:
            accepted = False
        assert bool(re.fullmatch(pattern, text)) == accepted, text


def test_cache_text_round_trips() -> None:
    for text in ("none", "first_block:0.05", "taylorseer:4", "sketch=first_block:0.1,render=taylorseer:2"):
        assert str(CacheSpec.parse(text)) == text
