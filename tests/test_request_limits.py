"""The operator's limits on one request (`ingress.limits`), without a cluster: the config's checks, each static
limit refused naming its field and its limit (as gRPC sends it: width and height, no `size`), an uploaded
handoff's request held to them, and the GPU-seconds limit priced with the step times a real job store measured
(embedded PostgreSQL). What the create schema publishes and its exactness: tests/test_schema_bounds.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from srserve.engine import GenerationRequest, ModelPairConfig
from srserve.engine.config import TINY_DEFAULTS
from srserve.engine.request import ResolvedRequest, SwitchPolicy, resolve_request
from srserve.serving.config import IngressConfig, ServingConfig
from srserve.serving.control.errors import InvalidRequest
from srserve.serving.control.jobs import JobState
from srserve.serving.control.pricing.pool_work import StageTimes
from srserve.serving.control.pricing.request_limits import (
    RequestLimits,
    StepPrices,
    check_request,
    predicted_gpu_s,
    work_units,
)
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.control.store.job_store import JobStore, ProgressUpdate
from srserve.serving.ingress import IngressCore
from tests.store_helpers import LIMITS

NEVER = JobStoreConfig(embedded_dsn="postgresql://127.0.0.1:1/never_opened")
T0 = 1_000.0
# The tiny pair's defaults: 64x64, 17 frames, 20 steps, guidance 5 (two passes): 0.139264 megapixel-frames.
TINY_UNITS = 64 * 64 * 17 * 2 / 1e6


def _resolved(**fields: object) -> ResolvedRequest:
    """A request with the tiny defaults, as a job stores it."""
    return resolve_request(GenerationRequest(prompt="x", **fields), TINY_DEFAULTS)


def _core(tiny_root: Path, limits: RequestLimits, job_store: JobStoreConfig = NEVER) -> IngressCore:
    pair = ModelPairConfig.tiny(tiny_root, write=False)
    config = ServingConfig(model=pair, job_store=job_store, ingress=IngressConfig(limits=limits))
    return IngressCore(config, pair.defaults, pair.name, pair.family, {}, pair=pair)


def _refusal(core: IngressCore, **fields: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        core.decide(GenerationRequest(prompt="x", **fields))
    return err.value


# -- the config ------------------------------------------------------------------------------------------


def test_the_config_takes_sizes_or_a_budget_and_the_pairs_defaults_within_them() -> None:
    with pytest.raises(ValidationError, match="sizes or max_pixels, not both"):
        RequestLimits(sizes=["64x64"], max_pixels=4096)
    for bad in (["64x65"], ["64*64"], ["4096x64"], []):
        with pytest.raises(ValidationError):
            RequestLimits(sizes=bad)
    with pytest.raises(ValidationError, match=r"default size: 64x64 .* sizes: 128x64"):
        ServingConfig(ingress=IngressConfig(limits=RequestLimits(sizes=["128x64"])))
    with pytest.raises(ValidationError, match=r"default num_inference_steps: 20 .* max_steps 8"):
        ServingConfig(ingress=IngressConfig(limits=RequestLimits(max_steps=8)))
    at_the_defaults = RequestLimits(max_pixels=4096, max_frames=17, max_steps=20, max_guidance_scale=5.0)
    assert ServingConfig(ingress=IngressConfig(limits=at_the_defaults)).ingress.limits == at_the_defaults


# -- the static limits, as gRPC asks (width and height) ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "limit"),
    [
        ({"width": 128, "height": 64}, None, None),  # at every limit
        ({"width": 128, "height": 64, "num_frames": 33, "num_inference_steps": 24, "guidance_scale": 6.0}, None, None),
        ({"width": 128, "height": 128}, "size", "sizes: 64x64, 128x64"),
        ({"width": 64, "height": 128}, "size", "sizes"),
        ({"num_frames": 37}, "num_frames", "max_frames 33"),
        ({"num_inference_steps": 25}, "num_inference_steps", "max_steps 24"),
        ({"sigmas": [1.0 - i / 25 for i in range(25)]}, "num_inference_steps", "max_steps 24"),  # a list's length
        ({"guidance_scale": 6.5}, "guidance_scale", "max_guidance_scale 6.0"),
    ],
)
def test_each_static_limit_is_refused_naming_it(
    tiny_root: Path, fields: dict, param: str | None, limit: str | None
) -> None:
    core = _core(
        tiny_root, RequestLimits(sizes=["64x64", "128x64"], max_frames=33, max_steps=24, max_guidance_scale=6.0)
    )
    if param is None:
        core.decide(GenerationRequest(prompt="x", **fields))
        return
    err = _refusal(core, **fields)
    assert err.param == param and limit in err.message, err.message


def test_a_pixel_budget_takes_any_aspect_within_it(tiny_root: Path) -> None:
    core = _core(tiny_root, RequestLimits(max_pixels=96 * 64))
    for width, height in ((96, 64), (64, 96), (16, 384)):
        assert core.decide(GenerationRequest(prompt="x", width=width, height=height)).width == width
    err = _refusal(core, width=80, height=80)
    assert err.param == "size" and "max_pixels 6144 (width x height is 6400)" in err.message


def test_an_uploaded_handoffs_request_keeps_to_the_limits(tiny_root: Path) -> None:
    """`submit_handoff` checks the handoff's request as the ingress would a prompt's, naming `handoff`."""
    limits = RequestLimits(max_frames=17)
    request = _core(tiny_root, RequestLimits()).decide(GenerationRequest(prompt="x", num_frames=21))
    with pytest.raises(InvalidRequest) as err:
        check_request(limits, request, where="handoff")
    assert err.value.param == "handoff" and err.value.message == "handoff: num_frames: 21 is above max_frames 17"


# -- the GPU-seconds limit ---------------------------------------------------------------------------------


def test_the_cost_is_steps_at_unit_step_times_times_the_work() -> None:
    request = _resolved(width=128, height=64, switch=SwitchPolicy(kind="fixed", step=5))
    times = StageTimes(encode_s=0.5, sketch_step_s=2.0, render_step_s=1.0, decode_s=0.25)
    units = work_units(128, 64, 17, 5.0)
    assert units == pytest.approx(2 * TINY_UNITS)
    assert predicted_gpu_s(request, times) == pytest.approx(5 * 2.0 * units + 0.5 + 15 * 1.0 * units + 0.25)
    # A sketch replica of two devices (ulysses 2) costs twice its wall time; an adaptive switch its upper bound.
    adaptive = request.model_copy(update={"switch": SwitchPolicy(kind="adaptive", max_step=12)})
    expected = (12 * 2.0 * units + 0.5) * 2 + 8 * 1.0 * units + 0.25
    assert predicted_gpu_s(adaptive, times, devices=(2, 1)) == pytest.approx(expected)
    unmeasured = StageTimes()
    assert predicted_gpu_s(request, unmeasured) is None
    assumed = StepPrices(sketch=2.0, render=1.0)
    assert predicted_gpu_s(request, unmeasured, assumed=assumed) == pytest.approx(5 * 2.0 * units + 15 * 1.0 * units)


async def _finished_tiny_job(store: JobStore) -> None:
    """One finished job of the tiny defaults' size, fixed:5 of 20 steps: 0.2 s a sketch step, 0.1 s a render
    step, encode and decode 0.5 s each (as tests/test_pool_work.py stamps them)."""
    request = _resolved(switch=SwitchPolicy(kind="fixed", step=5)).model_dump(mode="json")
    await store.create("done", request, 20, None, "o", 30, LIMITS)
    fence = (await store.begin_attempt("done", "sketch", "o", 3)).fence

    def up(state, step, total, stamps=None):
        return ProgressUpdate("done", fence, state, step, total, stamps or {})

    stamps = {"encode_start": T0, "encode_end": T0 + 0.5, "sketch_start": T0 + 0.5}
    await store.apply_progress([up(JobState.ENCODING, 0, 1, stamps), up(JobState.SKETCHING, 5, 5)])
    await store.record_handoff("done", fence, "k", 10, 5, {"sketch_end": T0 + 1.5})
    fence = (await store.begin_attempt("done", "render", "o", 3)).fence
    await store.apply_progress(
        [
            up(JobState.RENDERING, 5, 20, {"render_start": T0 + 2.0}),
            up(JobState.DECODING, 20, 20, {"decode_start": T0 + 3.5}),
        ]
    )
    await store.complete("done", fence, "v", 3, {"render_end": T0 + 4.0}, None)


def test_the_cost_limit_prices_with_the_stores_measured_step_times(tiny_root: Path, store_dsn: str) -> None:
    """The tiny defaults with fixed:5 cost 5 x 0.2 + 0.5 + 15 x 0.1 + 0.5 = 3.5 GPU-seconds as measured: accepted
    at a 3.5 limit; twice the pixels doubles the steps' share (6.0) and is refused naming max_gpu_s. Before any
    measurement nothing is refused for its cost, unless the operator assumed step prices."""
    five = SwitchPolicy(kind="fixed", step=5)

    async def run() -> None:
        limits = RequestLimits(max_gpu_s=3.5)
        fresh = _core(tiny_root, limits, JobStoreConfig(embedded_dsn=store_dsn))
        await fresh.store.migrate()
        huge = GenerationRequest(prompt="x", width=512, height=512, num_frames=81, switch=five)
        await fresh.resolve(huge)  # unmeasured: no cost refusal
        assumed = limits.model_copy(
            update={"assumed_step_s": StepPrices(sketch=0.2 / TINY_UNITS, render=0.2 / TINY_UNITS)}
        )
        priced = _core(tiny_root, assumed, JobStoreConfig(embedded_dsn=store_dsn))
        with pytest.raises(InvalidRequest, match="max_gpu_s"):
            await priced.resolve(GenerationRequest(prompt="x", switch=five))  # 5 x 0.2 + 15 x 0.2 = 4.0
        await _finished_tiny_job(fresh.store)
        await fresh.resolve(GenerationRequest(prompt="x", switch=five))  # at the limit
        with pytest.raises(InvalidRequest) as err:
            await fresh.resolve(GenerationRequest(prompt="x", width=128, switch=five))
        assert err.value.param is None and "6.0 GPU-seconds" in err.value.message
        assert "max_gpu_s 3.5" in err.value.message
        await priced.resolve(GenerationRequest(prompt="x", switch=five))  # measured now: the assumption is gone
        for core in (fresh, priced):
            await core.store.close()

    asyncio.run(run())
