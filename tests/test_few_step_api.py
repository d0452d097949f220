"""Few-step schedules at the serving layer's edges, without a cluster: the create body's `scheduler`,
`timesteps`, `sigmas`, `shift` as JSON and as forms (comma-separated, or the openai SDK's `NAME[]`
fields), the schema's cross-field rules, gRPC's fields and `srserve client`'s flags, the ingress's
resolution (the pair's bounds, wan2.2's boundary on the request's schedule, the pools' default caches),
and the schedule the Video object and the gRPC Job show. Served end to end: tests/test_serving_few_step.py.
The schema's exactness over random bodies: tests/test_api_contract.py::test_create_schema_is_exact."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import jsonschema_rs
import pytest

from srserve.cli import client as client_cli
from srserve.client.grpc_client import make_request
from srserve.engine import GenerationRequest, ModelPairConfig
from srserve.engine.denoising.cache import CachePolicy, CacheSpec
from srserve.engine.denoising.schedule import ScheduleBounds
from srserve.engine.request import RequestDefaults, resolve_request
from srserve.engine.tiny import write_tiny_wan22_pair
from srserve.serving.api.grpc import generate_request, job_message
from srserve.serving.api.http import openapi_document, video_object
from srserve.serving.api.schemas import Video, create_request, form_values
from srserve.serving.config import PoolConfig, ServingConfig
from srserve.serving.control.errors import InvalidRequest
from srserve.serving.control.request_cache import fit_schedule
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.ingress import IngressCore

MODEL = "tiny-wan2.1"
FEW = [1000, 750, 500, 250]
DISTILLED = {"scheduler": "euler", "timesteps": FEW, "shift": 5.0, "guidance_scale": 1.0}
_SCHEMA = openapi_document(MODEL)["components"]["schemas"]["VideoCreateParams"]
_VALID = jsonschema_rs.validator_for(_SCHEMA).is_valid


def _refused(body: dict) -> InvalidRequest:
    """The create body's refusal, which the published schema states as well."""
    assert not _VALID(body), body
    with pytest.raises(InvalidRequest) as err:
        create_request(body, MODEL, 8)
    return err.value


def test_a_few_step_body_runs_its_list_from_the_highest_down() -> None:
    body = {"prompt": "x", **DISTILLED, "timesteps": [250, 1000, 500, 750], "switch": "fixed:9"}
    assert _VALID(body)
    request, _ = create_request(body, MODEL, 8)
    assert request.timesteps == FEW and request.scheduler == "euler" and request.shift == 5.0
    assert request.guidance_scale == 1.0
    assert str(request.switch) == "fixed:4"  # capped at the list's length, not at the pair's 8 steps
    sigmas, _ = create_request({"prompt": "x", "sigmas": [0.25, 1, 0.5]}, MODEL, 8)
    assert sigmas.sigmas == [1.0, 0.5, 0.25] and sigmas.timesteps is None


def test_the_schemas_cross_field_rules_name_the_field() -> None:
    assert _refused({"prompt": "x", "timesteps": [1000, 500, 1000]}).param == "timesteps"  # a set: uniqueItems
    assert _refused({"prompt": "x", "sigmas": [1, 1.0]}).param == "sigmas"
    assert _refused({"prompt": "x", "timesteps": FEW, "sigmas": [1.0]}).param == "sigmas"
    assert _refused({"prompt": "x", "timesteps": FEW, "num_inference_steps": 4}).param == "num_inference_steps"
    assert _refused({"prompt": "x", "sigmas": [0.5], "num_inference_steps": 9}).param == "num_inference_steps"
    assert _refused({"prompt": "x", "timesteps": FEW, "cache": "first_block"}).param == "cache"
    assert _refused({"prompt": "x", "shift": 3, "cache": "render=mag"}).param == "cache"
    assert _refused({"prompt": "x", "scheduler": "ddim"}).param == "scheduler"
    assert _refused({"prompt": "x", "timesteps": [1001]}).param == "timesteps.0"
    assert _refused({"prompt": "x", "timesteps": []}).param == "timesteps"
    assert _refused({"prompt": "x", "shift": 0}).param == "shift"
    for ok in ({"prompt": "x", "timesteps": FEW, "cache": "sketch=none"}, {"prompt": "x", "scheduler": "unipc"}):
        assert _VALID(ok)
        create_request(ok, MODEL, 8)


def test_forms_carry_lists_as_text() -> None:
    assert form_values([("prompt", "x"), ("timesteps", "1000, 750,500,250")]) == {"prompt": "x", "timesteps": FEW}
    sdk = [("timesteps[]", "1000"), ("timesteps[]", "750"), ("sigmas[]", "0.5"), ("shift", "5.0")]
    assert form_values(sdk) == {"timesteps": [1000, 750], "sigmas": [0.5], "shift": 5.0}  # the openai SDK's lists
    repeated = [("timesteps", "1000"), ("timesteps", "750,500"), ("timesteps[]", "250")]  # as encoders send lists
    assert form_values(repeated) == {"timesteps": FEW}
    for items, param in (
        ([("timesteps", "1000,x")], "timesteps"),
        ([("sigmas", "1,,0.5")], "sigmas"),
        ([("timesteps", "")], "timesteps"),
        ([("timesteps[]", "1.5")], "timesteps"),
        ([("shift", "5"), ("shift", "5")], "shift"),
    ):
        with pytest.raises(InvalidRequest) as err:
            form_values(items)
        assert err.value.param == param, items
    # A `[]` field that is no list is an unknown field, as the schema says.
    with pytest.raises(InvalidRequest) as err:
        create_request(form_values([("prompt", "x"), ("seed[]", "5")]), MODEL, 8)
    assert err.value.param == "seed[]"


def test_grpc_takes_the_schedule_and_the_cli_sends_it() -> None:
    parser = argparse.ArgumentParser()
    client_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["client", "--prompt", "x", "--scheduler", "euler", "--timesteps", "250,500,750,1000", "--shift", "5"]
    )
    msg = make_request("x", scheduler=args.scheduler, timesteps=args.timesteps, sigmas=args.sigmas, shift=args.shift)
    request, _ = generate_request(msg, MODEL, 8)
    assert (request.scheduler, request.timesteps, request.sigmas, request.shift) == ("euler", FEW, None, 5.0)
    sigmas = generate_request(make_request("x", sigmas=[0.1, 0.3], num_inference_steps=2), MODEL, 8)[0]
    assert sigmas.sigmas == [0.3, 0.1]  # doubles: the values a JSON body gives, bit for bit
    plain = generate_request(make_request("x"), MODEL, 8)[0]
    assert (plain.scheduler, plain.timesteps, plain.sigmas, plain.shift) == (None, None, None, None)
    for fields, param in (
        ({"timesteps": FEW, "num_inference_steps": 3}, "timesteps"),  # gRPC: a matching count is allowed
        ({"timesteps": [500, 500]}, "timesteps"),
        ({"timesteps": FEW, "sigmas": [1.0]}, "sigmas"),
        ({"scheduler": "ddim"}, "scheduler"),
        ({"sigmas": [1.5]}, "sigmas.0"),
        ({"timesteps": FEW, "cache": "first_block"}, "cache"),
    ):
        with pytest.raises(InvalidRequest) as err:
            generate_request(make_request("x", **fields), MODEL, 8)
        assert err.value.param == param, fields
    assert generate_request(make_request("x", timesteps=FEW, num_inference_steps=4), MODEL, 8)[0].timesteps == FEW


def _job(request: dict) -> dict:
    base = {"prompt": "x", "num_frames": 17, "width": 64, "height": 64, "fps": 16, "cache": None, "lora": None}
    return {
        "id": "video_" + "0" * 32,
        "state": "completed",
        "progress": 100,
        "step": 4,
        "total": 4,
        "num_steps": 4,
        "switch_step": 2,
        "created_at": 1.0,
        "completed_at": 2.0,
        "request": {**base, **request},
    }


def test_the_job_shows_its_schedule() -> None:
    shown = video_object(_job({"scheduler": "euler", "timesteps": FEW, "sigmas": None, "shift": 5.0}), MODEL)
    assert Video.model_validate(shown).srserve.schedule.timesteps == FEW  # fits the published response schema
    assert shown["srserve"]["schedule"] == {"scheduler": "euler", "timesteps": FEW, "sigmas": None, "shift": 5.0}
    folder = video_object(_job({}), MODEL)["srserve"]["schedule"]  # a job stored before these fields
    assert folder == {"scheduler": None, "timesteps": None, "sigmas": None, "shift": None}
    msg = job_message(_job({"scheduler": "euler", "timesteps": FEW, "shift": 5.0})).schedule
    assert (msg.scheduler, list(msg.timesteps), list(msg.sigmas), msg.HasField("shift"), msg.shift) == (
        "euler",
        FEW,
        [],
        True,
        5.0,
    )
    assert not job_message(_job({})).schedule.HasField("shift")


def test_pool_default_caches_are_left_off_where_the_schedule_cannot_run_them() -> None:
    pools = CacheSpec(sketch=CachePolicy(kind="first_block"), render=CachePolicy(kind="mag"))
    few = resolve_request(GenerationRequest(prompt="x", timesteps=FEW), RequestDefaults())
    assert fit_schedule(pools, None, few) is None
    shifted = resolve_request(GenerationRequest(prompt="x", shift=3.0), RequestDefaults())
    assert fit_schedule(pools, None, shifted) == CacheSpec(sketch=CachePolicy(kind="first_block"), render=CachePolicy())
    plain = resolve_request(GenerationRequest(prompt="x"), RequestDefaults())
    assert fit_schedule(pools, None, plain) == pools
    asked = CacheSpec(sketch=CachePolicy(kind="first_block"))  # the request's own stays, for the engine to refuse
    assert fit_schedule(pools, asked, few) == CacheSpec(sketch=CachePolicy(kind="first_block"), render=CachePolicy())


# -- the ingress's resolution (no cluster: the store is never opened, no pool is called) ---------------


def _core(pair: ModelPairConfig, cache: CachePolicy | None = None) -> IngressCore:
    never = JobStoreConfig(embedded_dsn="postgresql://127.0.0.1:1/never_opened")
    sketch = PoolConfig() if cache is None else PoolConfig(cache=cache)
    config = ServingConfig(model=pair, job_store=never, sketch_pool=sketch)
    return IngressCore(config, pair.defaults, pair.name, pair.family, {}, pair=pair)


def _resolve(core: IngressCore, **fields: object):
    return asyncio.run(core.resolve(GenerationRequest(prompt="x", **fields)))[0]


def _refusal(core: IngressCore, **fields: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        _resolve(core, **fields)
    return err.value


@pytest.fixture(scope="module")
def wan22(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> ModelPairConfig:
    root = tmp_path_factory.mktemp("tiny-wan22-few-step")
    write_tiny_wan22_pair(root)
    return ModelPairConfig.tiny_wan22(
        root, write=False, name="tiny-wan2.2-wan2.1", render_path=str(tiny_root / "render"), num_threads=1
    )


def test_wan22_boundary_switch_counts_the_requests_schedule(wan22: ModelPairConfig) -> None:
    core = _core(wan22)
    family = core._family
    assert family is not None
    early = _resolve(core, scheduler="euler", timesteps=[1000, 990, 980, 970], shift=1.0)  # all high-noise
    assert str(early.switch) == "fixed:4" and str(family.boundary_switch(4)) != "fixed:4"
    late = _resolve(core, sigmas=[0.5, 0.4, 0.3, 0.2], shift=1.0)  # all below the boundary
    assert str(late.switch) == "fixed:0"
    # The published distilled schedule: shift 5 moves it to [1000, 937.5, 833.3, 625], two steps at or above
    # the boundary t = 875 (what benchmarks/derive_few_step_profile.py records for wan2.2)
    distilled = _resolve(core, scheduler="euler", timesteps=[1000, 750, 500, 250], shift=5.0)
    assert str(distilled.switch) == "fixed:2"
    plain = _resolve(core, num_inference_steps=8)
    assert plain.switch == family.boundary_switch(8)  # no schedule fields: as before
    assert str(_resolve(core, timesteps=[1000, 990, 980, 970], shift=1.0, switch="fixed:1").switch) == "fixed:1"


def _distilled(pair: ModelPairConfig) -> ModelPairConfig:
    """A 4-step distilled pair's defaults and bounds (docs/engine.md, Few-step schedules)."""
    defaults = pair.defaults.model_copy(update={"num_inference_steps": 4, **DISTILLED})
    bounds = ScheduleBounds(schedulers=["euler"], min_steps=2, max_steps=8, max_guidance_scale=1.0)
    return pair.model_copy(update={"defaults": defaults, "schedule": bounds})


def test_ingress_refuses_schedules_outside_the_pairs_bounds(tiny_config: ModelPairConfig) -> None:
    core = _core(_distilled(tiny_config))
    default = _resolve(core)
    assert (default.timesteps, default.num_inference_steps, default.scheduler, default.shift) == (FEW, 4, "euler", 5.0)
    assert _resolve(core, num_inference_steps=8).timesteps is None  # 8 evenly spaced steps of euler, shift 5
    assert _refusal(core, scheduler="unipc").param == "scheduler"
    assert _refusal(core, timesteps=[1000]).param == "num_inference_steps"
    assert _refusal(core, guidance_scale=5.0).param == "guidance_scale"


def test_ingress_leaves_the_pools_default_cache_off_for_a_few_step_schedule(tiny_config: ModelPairConfig) -> None:
    core = _core(tiny_config, cache=CachePolicy(kind="first_block"))
    assert str(_resolve(core).cache) == "sketch=first_block,render=none"  # no schedule: the pool's own
    assert _resolve(core, timesteps=FEW).cache is None
    assert _resolve(core, sigmas=[1.0, 0.5], cache=CacheSpec.parse("sketch=none")).cache is None
    distilled = _core(_distilled(tiny_config), cache=CachePolicy(kind="first_block"))
    assert _resolve(distilled).cache is None  # the pair's default list
    err = _refusal(distilled, cache=CacheSpec.parse("sketch=first_block"))  # asked for: refused, not dropped
    assert err.param == "cache" and "few-step" in err.message
