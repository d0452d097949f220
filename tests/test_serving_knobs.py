"""Step caches and the load-aware switch served end to end on the shared local cluster."""

from __future__ import annotations

import grpc
import pytest

from srserve.engine import GenerationRequest, SRDiffusionEngine
from srserve.engine.denoising.cache import CachePolicy, CacheSpec
from srserve.engine.denoising.mag_calibration import calibrate, write_ratios
from srserve.serving.control.pricing.load_switch import REASONS
from tests.serving_helpers import get, post, wait_state

pytestmark = pytest.mark.slow
APP = "knobs"
BODY = {"prompt": "a paper boat on a river", "num_inference_steps": 10, "switch": "fixed:4", "seed": 21}
SKETCH_CACHE = CachePolicy(kind="taylorseer", interval=2)


@pytest.fixture(scope="module")
def knobs(serving, tiny_config, tmp_path_factory):
    """An app whose sketch pool caches with TaylorSeer and whose render pool runs a calibrated MagCache."""
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import PoolConfig, ServingConfig
    from srserve.serving.control.request_cache import CacheLimits

    model = tiny_config.model_copy(update={"num_threads": 1})
    ratios = write_ratios(
        calibrate(SRDiffusionEngine(tiny_config), GenerationRequest(prompt="calibration", num_inference_steps=10)),
        tmp_path_factory.mktemp("mag") / "ratios.json",
    )
    render_cache = CachePolicy(kind="mag", threshold=0.5, ratios_file=str(ratios))
    options = {"num_cpus": 0.25}
    config = ServingConfig(
        app_name=APP,
        model=model,
        sketch_pool=PoolConfig(
            max_backlog=16, ray_actor_options=options, cache=SKETCH_CACHE, cache_limits=CacheLimits(kinds=["none"])
        ),
        render_pool=PoolConfig(
            max_backlog=16,
            ray_actor_options=options,
            cache=render_cache,
            cache_limits=CacheLimits(kinds=["none", "taylorseer"]),
        ),
    )
    serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")
    yield serving.http + f"/{APP}", serving.grpc, render_cache
    serve.delete(APP)


def _served(base: str, body: dict) -> tuple[dict, bytes]:
    r = post(base, "/v1/videos", json=body)
    assert r.status_code == 200, r.text
    done = wait_state(base, r.json()["id"], timeout_s=300)
    assert done["status"] == "completed", done
    return done, get(base, f"/v1/videos/{done['id']}/content").content


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        (None, lambda render: CacheSpec(sketch=SKETCH_CACHE, render=render)),  # the pools' own
        ("sketch=none,render=taylorseer:3", lambda render: CacheSpec.parse("sketch=none,render=taylorseer:3")),
    ],
)
def test_served_caches_equal_the_engine_byte_for_byte(knobs, engine, cache, expected) -> None:
    base, _, render_cache = knobs
    body = {**BODY, **({"cache": cache} if cache else {})}
    done, mp4 = _served(base, body)
    spec = expected(render_cache)
    assert done["srserve"]["cache"] == str(spec)
    local = engine.generate(GenerationRequest(**{**BODY, "cache": spec}))
    assert mp4 == local.video
    plain = engine.generate(GenerationRequest(**BODY))
    assert mp4 != plain.video  # the caches did skip work


@pytest.mark.parametrize(
    ("cache", "param", "says"),
    [
        ("sketch=first_block", "cache.sketch", "not allowed"),
        ("render=first_block:0.1", "cache.render", "not allowed"),
        ("sketch=mag", "cache.sketch", "no calibrated MagCache ratios"),
        ("first_block:5", "cache", "expected KIND"),
    ],
)
def test_refused_caches_name_the_field(knobs, cache, param, says) -> None:
    base, grpc_target, _ = knobs
    r = post(base, "/v1/videos", json={**BODY, "cache": cache})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import GenerationFailed, make_request

    with SrserveClient(grpc_target, application=APP) as client, pytest.raises(GenerationFailed) as err:
        client.submit(make_request("x", num_inference_steps=4, cache=cache))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and param in err.value.details


def test_load_switch_records_its_cap_and_reason(knobs) -> None:
    base, grpc_target, _ = knobs
    body = {**BODY, "switch": "load", "cache": "sketch=none,render=none"}
    first, _ = _served(base, body)
    later, _ = _served(base, body)
    for done in (first, later):
        details = done["srserve"]
        assert details["switch_reason"] in REASONS
        assert 0 < details["switch_step"] <= details["switch_cap"] <= 6  # adaptive's upper bound: 60% of 10
    # The second job was admitted with the first one's step times measured: no longer "unmeasured".
    assert later["srserve"]["switch_reason"] in ("adaptive", "balance", "slo", "floor")
    from srserve.client import SrserveClient

    with SrserveClient(grpc_target, application=APP) as client:
        job = client.get_job(later["id"])
    assert job.switch_cap == later["srserve"]["switch_cap"] and job.switch_reason == later["srserve"]["switch_reason"]
