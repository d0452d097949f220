"""The published create schema within a deployment's pair: what `ModelPairConfig.schedule` bounds let a request
set, a family without flow-matching schedules (CogVideoX), and the operator's request limits (`ingress.limits`:
sizes or a pixel budget, frames, steps, guidance), stated by `/openapi.json` exactly as the ingress decides it.
Random bodies are valid by the deployment's schema exactly when the ingress accepts them: the real
`create_request` and `IngressCore.decide` (the pair's defaults applied, `check_schedule`, the pools' caches),
without a cluster (the store is never opened, no pool is called). The unbounded tiny deployment's exactness:
tests/test_api_contract.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srserve.engine import ModelPairConfig
from srserve.engine.denoising.cache import CachePolicy
from srserve.engine.denoising.schedule import SCHEDULE_FIELDS, ScheduleBounds
from srserve.serving.api import schemas
from srserve.serving.api.http import openapi_document, served_document
from srserve.serving.api.schemas import create_request, form_values
from srserve.serving.config import IngressConfig, PoolConfig, ServingConfig
from srserve.serving.control.errors import InvalidRequest
from srserve.serving.control.pricing.request_limits import RequestLimits
from srserve.serving.control.request_cache import CacheLimits
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.ingress import IngressCore
from tests.schema_strategies import conforming

FEW = [1000, 750, 500, 250]
# The brief's bounded pair: euler only, 1..8 steps, no explicit lists, shift 3..8, no CFG.
BOUNDED = ScheduleBounds(
    schedulers=["euler"], min_steps=1, max_steps=8, explicit_schedule=False, min_shift=3.0, max_shift=8.0,
    max_guidance_scale=1.0,
)  # fmt: skip
# A distilled pair that runs its own list, scheduler and shift by default (docs/engine.md, Few-step schedules).
DISTILLED = ScheduleBounds(schedulers=["euler"], min_steps=2, max_steps=6, max_shift=12.0, max_guidance_scale=1.0)
DISTILLED_DEFAULTS = {"num_inference_steps": 4, "scheduler": "euler", "timesteps": FEW, "shift": 5.0}
NEVER = JobStoreConfig(embedded_dsn="postgresql://127.0.0.1:1/never_opened")
# Operator limits around the tiny pair's defaults (64x64, 17 frames, 20 steps, guidance 5): a list of sizes, and
# a pixel budget (96x64 fits, 80x80 does not) whose frames leave `seconds` only "1" (17 frames at 16 fps).
LIMITED = RequestLimits(
    sizes=["64x64", "128x64", "64x128"], max_frames=33, max_steps=24, max_guidance_scale=6.0, max_gpu_s=100.0
)
BUDGET = RequestLimits(max_pixels=96 * 64, max_frames=17, max_steps=20)
SMALLEST = RequestLimits(sizes=["64x64"], max_frames=9, max_steps=5)  # no `seconds` fits 9 frames


# Pools whose requests may ask for step caches, `mag` on the render pool (its own, calibrated: the file is
# read only where a job runs), so the caches a schedule refuses are in play.
_KINDS = CacheLimits(kinds=["none", "first_block", "taylorseer"])
SKETCH_POOL = PoolConfig(cache_limits=_KINDS)
RENDER_POOL = PoolConfig(cache=CachePolicy(kind="mag", ratios_file="calibrated.json"), cache_limits=_KINDS)


def _core(pair: ModelPairConfig, limits: RequestLimits | None = None) -> IngressCore:
    ingress = IngressConfig(limits=limits or RequestLimits())
    config = ServingConfig(
        model=pair, job_store=NEVER, sketch_pool=SKETCH_POOL, render_pool=RENDER_POOL, ingress=ingress
    )
    return IngressCore(config, pair.defaults, pair.name, pair.family, {}, pair=pair)


def _pair(tiny_root: Path, bounds: ScheduleBounds, **defaults: Any) -> ModelPairConfig:
    """The tiny Wan2.1 pair with `bounds` and defaults within them (ModelPairConfig checks they are)."""
    base = ModelPairConfig.tiny(tiny_root, write=False)
    merged = {**base.defaults.model_dump(), "guidance_scale": 1.0, **defaults}
    return ModelPairConfig.tiny(tiny_root, write=False, schedule=bounds, defaults=merged)


@pytest.fixture(scope="module")
def cores(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, IngressCore]:
    cog_root = tmp_path_factory.mktemp("tiny-cogvideox-bounds")
    cog_bounds = ScheduleBounds(min_steps=2, max_steps=30, max_guidance_scale=6.0)
    return {
        "plain": _core(ModelPairConfig.tiny(tiny_root, write=False)),
        "bounded": _core(_pair(tiny_root, BOUNDED, num_inference_steps=4)),
        "distilled": _core(_pair(tiny_root, DISTILLED, **DISTILLED_DEFAULTS)),
        "cogvideox": _core(ModelPairConfig.tiny_cogvideox(cog_root)),
        "cogvideox-bounded": _core(ModelPairConfig.tiny_cogvideox(cog_root, write=False, schedule=cog_bounds)),
        "limited": _core(ModelPairConfig.tiny(tiny_root, write=False), LIMITED),
        "budget": _core(ModelPairConfig.tiny(tiny_root, write=False), BUDGET),
        "distilled-limited": _core(_pair(tiny_root, DISTILLED, **DISTILLED_DEFAULTS, num_frames=9), SMALLEST),
    }


_DOCS: dict[int, tuple[dict[str, Any], Any]] = {}


def _published(core: IngressCore) -> tuple[dict[str, Any], Any]:
    """The deployment's create schema and its validator (built once per core, as a replica builds it once)."""
    if id(core) not in _DOCS:
        create = served_document(core)["components"]["schemas"]["VideoCreateParams"]
        _DOCS[id(core)] = create, jsonschema_rs.validator_for(create)  # the validator schemathesis uses
    return _DOCS[id(core)]


def _create(core: IngressCore) -> dict[str, Any]:
    return _published(core)[0]


def _valid(core: IngressCore, body: dict[str, Any]) -> bool:
    return _published(core)[1].is_valid(body)


def accepts(core: IngressCore, body: dict[str, Any]) -> bool:
    """What POST /v1/videos does with a JSON body for this deployment, short of storing the job."""
    try:
        request, _ = create_request(body, core.model_name, core.defaults.num_inference_steps, _size_only(core))
        core.decide(request)
    except InvalidRequest:
        return False
    return True


def _refusal(core: IngressCore, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        request, _ = create_request(body, core.model_name, core.defaults.num_inference_steps, _size_only(core))
        core.decide(request)
    return err.value


def _size_only(core: IngressCore) -> bool:
    """As POST /v1/videos reads a body: its size as `size` only where the deployment limits the size."""
    return core.config.ingress.limits.limits_size


# -- what each deployment publishes ---------------------------------------------------------------------


def test_an_unbounded_pair_publishes_the_engines_limits(cores: dict[str, IngressCore]) -> None:
    core = cores["plain"]
    unbounded = openapi_document(core.model_name, cache_pattern=core.cache_pattern())
    assert served_document(core) == unbounded  # a pair without bounds: the schema as before


def test_a_bounded_pair_publishes_its_bounds(cores: dict[str, IngressCore]) -> None:
    props = _create(cores["bounded"])["properties"]
    assert props["scheduler"]["enum"] == ["euler"]
    assert (props["num_inference_steps"]["minimum"], props["num_inference_steps"]["maximum"]) == (1, 8)
    assert "timesteps" not in props and "sigmas" not in props  # explicit_schedule off
    assert (props["shift"]["minimum"], props["shift"]["maximum"]) == (3.0, 8.0)
    assert props["guidance_scale"]["maximum"] == 1.0
    distilled = _create(cores["distilled"])["properties"]
    for name in ("timesteps", "sigmas"):  # a list's length is the step count
        (array,) = distilled[name]["anyOf"]  # at least 2 steps: no bare (one-step) value
        assert (array["minItems"], array["maxItems"]) == (2, 6)
    assert "exclusiveMinimum" in distilled["shift"] and distilled["shift"]["maximum"] == 12.0


def test_cogvideox_publishes_no_schedule_field(cores: dict[str, IngressCore]) -> None:
    for name in ("cogvideox", "cogvideox-bounded"):
        props = _create(cores[name])["properties"]
        assert not set(SCHEDULE_FIELDS) & set(props), name
        assert "num_inference_steps" in props and "guidance_scale" in props
    props = _create(cores["cogvideox-bounded"])["properties"]
    assert (props["num_inference_steps"]["minimum"], props["num_inference_steps"]["maximum"]) == (2, 30)
    assert props["guidance_scale"]["maximum"] == 6.0


def test_request_limits_are_published(cores: dict[str, IngressCore]) -> None:
    """A limited size is `size` only (no `width`/`height`); frames, steps and guidance narrow their maxima; the
    GPU-seconds limit is described, not stated; a deployment without limits publishes no trace of them."""
    limited = _create(cores["limited"])
    props = limited["properties"]
    assert "width" not in props and "height" not in props
    assert props["size"]["enum"] == LIMITED.sizes
    assert max(props["num_frames"]["enum"]) == props["num_frames"]["maximum"] == 33
    assert props["num_inference_steps"]["maximum"] == 24 and props["guidance_scale"]["maximum"] == 6.0
    assert limited["x-srserve-max-gpu-s"] == 100.0 and "GPU-seconds" in limited["description"]
    (seconds_rule,) = [r for r in limited["allOf"] if any("seconds" in b.get("properties", {}) for b in r["anyOf"])]
    assert seconds_rule["anyOf"][2]["properties"]["seconds"]["enum"] == ["1", "2"]  # 17 and 33 frames at 16 fps
    budget = _create(cores["budget"])["properties"]
    assert "width" not in budget and "enum" not in budget["size"]
    assert all(re.fullmatch(budget["size"]["pattern"], s) for s in ("64x64", "96x64", "64x96", "16x384"))
    assert not any(re.fullmatch(budget["size"]["pattern"], s) for s in ("80x80", "16x400", "64x65", "0x64"))
    distilled = _create(cores["distilled-limited"])["properties"]
    assert distilled["timesteps"]["anyOf"][0]["maxItems"] == 5 and distilled["num_inference_steps"]["maximum"] == 5
    for name in ("plain", "bounded", "distilled"):
        assert "x-srserve-max-gpu-s" not in _create(cores[name]) and "width" in _create(cores[name])["properties"]


def test_every_body_variant_and_example_keeps_to_the_pair(cores: dict[str, IngressCore]) -> None:
    """JSON, multipart and urlencoded bodies share the narrowed schema; an image-to-video deployment's form is
    a copy of it; the schema's own examples are bodies the deployment accepts."""
    for core in cores.values():
        doc = served_document(core)
        content = doc["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
        assert {media: body["schema"]["$ref"] for media, body in content.items()} == {
            media: "#/components/schemas/VideoCreateParams"
            for media in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
        }
        create = doc["components"]["schemas"]["VideoCreateParams"]
        assert create["examples"]
        valid = jsonschema_rs.validator_for(create).is_valid
        for example in create["examples"]:
            assert valid(example) and accepts(core, example), (core.model_name, example)
    limits = cores["bounded"].schedule_limits()
    i2v = openapi_document("x", takes_image=True, schedule=limits)["components"]["schemas"]
    form, params = dict(i2v["VideoCreateForm"]), i2v["VideoCreateParams"]
    assert form.pop("title") == "VideoCreateForm" and form["properties"].pop("input_reference")
    assert form.pop("required") == [*params["required"], "input_reference"]
    assert form == {k: v for k, v in params.items() if k not in ("title", "required")}


# -- explicit examples: the schema and the ingress agree, and the ingress names the field -------------------


@pytest.mark.parametrize(
    ("pair", "body", "param"),
    [
        ("bounded", {"scheduler": "euler", "shift": 3, "num_inference_steps": 8, "guidance_scale": 1}, None),
        ("bounded", {"scheduler": "unipc"}, "scheduler"),
        ("bounded", {"num_inference_steps": 9}, "num_inference_steps"),
        ("bounded", {"timesteps": FEW}, "timesteps"),
        ("bounded", {"sigmas": [1.0, 0.5]}, "sigmas"),
        ("bounded", {"shift": 2.99}, "shift"),
        ("bounded", {"shift": 8.5}, "shift"),
        ("bounded", {"guidance_scale": 1.5}, "guidance_scale"),
        ("distilled", {"timesteps": [1000, 500, 250]}, None),
        ("distilled", {"timesteps": [1000]}, "num_inference_steps"),  # the list is the step count: 1 < 2
        ("distilled", {"sigmas": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]}, "num_inference_steps"),
        ("distilled", {"cache": "sketch=first_block"}, "cache"),  # the pair's own list runs: no cache
        ("distilled", {"num_inference_steps": 4, "cache": "first_block"}, "cache"),  # its default step count too
        ("distilled", {"num_inference_steps": 6, "cache": "first_block"}, None),  # 6 evenly spaced steps
        ("distilled", {"num_inference_steps": 6, "cache": "render=mag"}, "cache"),  # the pair's own scheduler
        ("bounded", {"cache": "render=mag:0.1"}, None),  # the folder's scheduler, no shift
        ("bounded", {"shift": 4, "cache": "render=mag"}, "cache"),
        ("cogvideox", {"num_inference_steps": 50, "guidance_scale": 7}, None),
        ("cogvideox", {"scheduler": "euler"}, "scheduler"),
        ("cogvideox", {"shift": 5.0}, "shift"),
        ("cogvideox", {"timesteps": FEW}, "timesteps"),
        ("cogvideox-bounded", {"num_inference_steps": 31}, "num_inference_steps"),
        ("cogvideox-bounded", {"guidance_scale": 6.5}, "guidance_scale"),
        # the operator's limits: refused naming the field, accepted at the limit
        ("limited", {"size": "128x64", "num_frames": 33, "num_inference_steps": 24, "guidance_scale": 6}, None),
        ("limited", {"size": "128x128"}, "size"),
        ("limited", {"width": 64}, "width"),  # a limited size is given as `size`
        ("limited", {"height": 64, "size": "64x64"}, "height"),
        ("limited", {"num_frames": 37}, "num_frames"),
        ("limited", {"seconds": "3"}, "num_frames"),  # 49 frames at 16 fps
        ("limited", {"seconds": "3", "num_frames": 33}, None),  # num_frames takes precedence
        ("limited", {"num_inference_steps": 25}, "num_inference_steps"),
        ("limited", {"timesteps": list(range(1000, 0, -40))}, "num_inference_steps"),  # 25 steps
        ("limited", {"guidance_scale": 6.01}, "guidance_scale"),
        ("budget", {"size": "96x64", "seconds": "1"}, None),
        ("budget", {"size": "80x80"}, "size"),
        ("budget", {"size": "16x384"}, None),
        ("budget", {"seconds": "2"}, "num_frames"),
        ("budget", {"num_inference_steps": 21}, "num_inference_steps"),
        ("distilled-limited", {"timesteps": [1000, 800, 600, 400, 200]}, None),
        ("distilled-limited", {"num_inference_steps": 6}, "num_inference_steps"),
        ("distilled-limited", {"sigmas": [1.0, 0.8, 0.6, 0.4, 0.2, 0.1]}, "num_inference_steps"),
        ("distilled-limited", {"seconds": "1"}, "num_frames"),  # no `seconds` fits 9 frames
        ("distilled-limited", {"seconds": "1", "num_frames": 9}, None),
    ],
)
def test_examples(cores: dict[str, IngressCore], pair: str, body: dict[str, Any], param: str | None) -> None:
    core = cores[pair]
    body = {"prompt": "x", **body}
    assert _valid(core, body) == (param is None), body
    if param is None:
        assert accepts(core, body), body
    else:
        assert _refusal(core, body).param == param, body


def test_a_form_is_refused_as_its_json_body(cores: dict[str, IngressCore]) -> None:
    """A form's text values are typed by the one model, then the ingress decides as for JSON."""
    core = cores["bounded"]
    ok = form_values([("prompt", "x"), ("scheduler", "euler"), ("shift", "4"), ("guidance_scale", "0.5")])
    assert accepts(core, ok)
    sdk = form_values([("prompt", "x"), ("timesteps[]", "1000"), ("timesteps[]", "500")])
    assert _refusal(core, sdk).param == "timesteps"
    assert _refusal(cores["cogvideox"], form_values([("prompt", "x"), ("sigmas", "1,0.5")])).param == "sigmas"


# -- random bodies: valid by the deployment's schema exactly when the deployment accepts them ---------------

_TIMESTEP_LISTS = st.lists(st.integers(-1, 1001), max_size=9)
_SIGMA_LISTS = st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1]), max_size=9)
_EDGES = [0, 0.5, 0.99, 1, 1.01, 1.5, 2, 2.99, 3, 4, 5, 6, 7, 8, 8.01, 9, 12, 12.5, 30, 31, 50, 100, 100.5, 200, 201]
_SIZES = ["64x64", "128x64", "64x128", "128x128", "96x64", "80x80", "16x384", "16x400", "32x32"]
_LIMIT_EDGES = [6.01, 13, 17, 20, 21, 24, 25, 33, 37, 64, 80, 96, 128, "1", "2", "3"]  # the limits' edges
_WILD = st.one_of(
    st.sampled_from(_EDGES),
    st.sampled_from(_LIMIT_EDGES),
    st.integers(-2, 210),
    st.floats(-1, 101, allow_nan=False),
    st.sampled_from(["euler", "unipc", "ddim", "", "none", "first_block", "taylorseer:2", "sketch=none"]),
    st.sampled_from(["sketch=first_block,render=none", "render=taylorseer", "mag", "render=mag:0.2", "fixed:3"]),
    st.sampled_from(["adaptive", "load", "sketch=none,render=mag"]),
    st.sampled_from(_SIZES),
    st.sampled_from([FEW, [1000, 500], [250, 1000], [500, 500], [1.0, 0.5], [0.5], [], [True]]),
    _TIMESTEP_LISTS,
    _SIGMA_LISTS,
    st.none(),
    st.booleans(),
)
# Every field a create body can name anywhere (the unbounded schema's), so refused fields are sent too.
_FIELDS = [*schemas.FIELD_TYPES]
_CACHES = ["mag", "render=mag", "sketch=none,render=mag:0.1", "first_block", "sketch=taylorseer:3", "none"]
_SCHEDULE_SIDE = ["num_inference_steps", "guidance_scale", *SCHEDULE_FIELDS, "cache", "switch"]
_SIZE_SIDE = ["size", "width", "height", "num_frames", "seconds", "fps"]  # what the request limits narrow


def _bodies(create: dict[str, Any]) -> st.SearchStrategy:
    """Bodies mostly valid by `create` (its schedule's properties drawn from it), with a few wild values for
    any field, the ones `create` leaves out included."""
    props = create["properties"]
    optional = {name: conforming(props[name], 8) for name in [*_SCHEDULE_SIDE, *_SIZE_SIDE] if name in props}
    optional["cache"] = st.one_of(optional["cache"], st.sampled_from(_CACHES))  # the kinds a schedule refuses
    optional["size"] = st.one_of(optional["size"], st.sampled_from(_SIZES))  # the sizes a limit refuses
    fields = st.one_of(st.sampled_from(_SCHEDULE_SIDE), st.sampled_from(_SIZE_SIDE), st.sampled_from(_FIELDS))
    wild = st.dictionaries(fields, _WILD, max_size=2)
    return st.builds(
        lambda valid, extra: {**valid, **extra},
        st.fixed_dictionaries({"prompt": st.just("x")}, optional=optional),
        st.one_of(st.just({}), wild),
    )


_BODIES: dict[str, st.SearchStrategy] = {}


def _exactness(name: str) -> Any:
    """A property test: the deployment `name`'s schema says valid exactly when its ingress accepts."""

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test(cores: dict[str, IngressCore], data: st.DataObject) -> None:
        core = cores[name]
        body = data.draw(_BODIES.setdefault(name, _bodies(_create(core))))
        assert _valid(core, body) == accepts(core, body), body

    return test


test_bounded_schema_is_exact = _exactness("bounded")
test_distilled_schema_is_exact = _exactness("distilled")
test_cogvideox_schema_is_exact = _exactness("cogvideox")
test_bounded_cogvideox_schema_is_exact = _exactness("cogvideox-bounded")
test_limited_schema_is_exact = _exactness("limited")
test_budget_schema_is_exact = _exactness("budget")
test_limited_distilled_schema_is_exact = _exactness("distilled-limited")


def test_schemathesis_can_generate_every_published_create_body(cores: dict[str, IngressCore]) -> None:
    """schemathesis' generator models a schema through jsonschema_rs' canonical form; where that form is
    `raw` (too many combinations of cross-field branches) it reports a Schema Error for the whole
    operation. Each deployment's create body, and the image-to-video form's, stays within it."""
    import jsonschema_rs

    from srserve.serving.api.http import openapi_document

    documents = {name: _create(core) for name, core in cores.items()}
    image = openapi_document("tiny-wan2.1-i2v", takes_image=True)["components"]["schemas"]
    documents |= {f"i2v {name}": spec for name, spec in image.items() if name.startswith("VideoCreate")}
    for name, schema in documents.items():
        kind = jsonschema_rs.canonicalize(schema, validate_formats=True).kind
        assert kind != jsonschema_rs.canonical.CanonicalKind.RAW, name
