"""The HTTP API's request and response models: what /openapi.json publishes and what the routes check.

The create body's schema is exact, so a client built from it never sends a request the server
refuses for its shape (backpressure and outages aside): every limit is the engine's
(`srserve.engine.request.GenerationRequest`), and the HTTP spellings (`size`, `seconds`) are
patterns over those limits; `switch` and `cache` publish the engine's own grammars
(`srserve.engine.grammar`). JSON Schema cannot compare two fields, so the two rules that would need
it are made expressible: a switch step is capped at the step count (`fixed:K` with K at or past the
step count runs the large model only, as `fixed:N` does; adaptive bounds are capped the same way;
`GenerationRequest.with_capped_switch`), and `seconds` counts frames at the default rate (every
published value fits the 257-frame limit there), so an explicit `fps` goes with `num_frames`, not with
`seconds`. The schedule's lists likewise: JSON Schema cannot say "strictly decreasing", so
`timesteps` and `sigmas` are sets (distinct values, `uniqueItems`) that run from the highest down
(`schedule_fields` orders them); a list is the step count, so it excludes `num_inference_steps`, and
the two lists exclude each other; a cache the engine refuses with a schedule (any cache with a list,
`mag` with a `scheduler` or `shift`) is refused by the schema too. A list may also be one bare value
(a one-step list): in a form the two are the same text, so the schema says so for JSON too.
A deployment publishes this schema within its pair: its adapters (`lora`), its pools' cache kinds and
its pair's schedule bounds and defaults (`narrow_schedule`).

Each cross-field rule is one small `anyOf` of property sets, never an `if`/`then` per value: schema
tools expand conditions into every combination of their branches, and a schema whose product grows
past what they model (schemathesis' generator gives up beyond a few dozen) cannot be tested from it.

A create body becomes the engine's request once (`create_request`); the ingress resolves it.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from srserve.engine.adapters.spec import LORA
from srserve.engine.denoising.cache import CACHE, CACHE_KINDS
from srserve.engine.denoising.schedule import (
    SCHEDULE_FIELDS,
    SCHEDULER_NAMES,
    ScheduleLimits,
    SchedulerName,
    Shift,
    Sigma,
    Timestep,
)
from srserve.engine.grammar import field_limits
from srserve.engine.request import MAX_STEPS, SWITCH, GenerationRequest, describe_validation_error, error_field
from srserve.serving.control.errors import InvalidRequest
from srserve.serving.control.jobs import JobState
from srserve.serving.control.pricing.request_limits import RequestLimits
from srserve.serving.control.tenants import PRIORITY_LIMIT


def engine_limits(name: str) -> dict[str, Any]:
    """The engine's bounds on one request field, as pydantic Field arguments (one source of truth)."""
    return field_limits(GenerationRequest, name)


SIDE = engine_limits("height")
SIDE_MULTIPLE = 16  # GenerationRequest's height/width validator: multiples of 16
FRAMES = engine_limits("num_frames")
FRAME_STRIDE = 4  # GenerationRequest's num_frames validator: 4k+1
FPS = engine_limits("fps")
DEFAULT_FPS: int = GenerationRequest.model_fields["fps"].default
FRAME_COUNTS = list(range(FRAMES["ge"], FRAMES["le"] + 1, FRAME_STRIDE))
SIDES = list(range(SIDE["ge"], SIDE["le"] + 1, SIDE_MULTIPLE))
# Python's str.isspace() characters (the engine's "prompt must contain non-whitespace text") and NUL,
# which PostgreSQL cannot store in text or jsonb.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
PROMPT_PATTERN = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"
NO_NUL_PATTERN = r"^[^\x00]*$"
SIZE_PATTERN = "^(?:{0})x(?:{0})$".format("|".join(map(str, SIDES)))
VIDEO_ID_PATTERN = r"^video_[0-9a-f]{32}$"
SWITCH_PATTERN = SWITCH.pattern()
CACHE_PATTERN = CACHE.pattern()  # every kind; a deployment publishes the kinds its pools allow
LORA_PATTERN = LORA.pattern()  # any name; a deployment publishes its pair's adapters (or leaves the field out)
# The schedule's lists, and the caches the engine runs with them (`srserve.engine.request.cache_refusal`).
SCHEDULE_LISTS = ("timesteps", "sigmas")
NO_CACHE_PATTERN = CACHE.pattern(sketch=["none"], render=["none"])
_NOT_MAG = [k for k in CACHE_KINDS if k != "mag"]
NO_MAG_PATTERN = CACHE.pattern(sketch=_NOT_MAG, render=_NOT_MAG)


def frames_for_seconds(seconds: float, fps: int) -> int:
    """The 4k+1 frame count closest to `seconds` of video at `fps`."""
    return max(1, 4 * round(seconds * fps / 4) + 1)


# Whole seconds (as the openai SDK spells them: strings) that fit the frame limit at the default rate.
SECONDS = [str(s) for s in range(1, 10_000) if frames_for_seconds(s, DEFAULT_FPS) <= FRAMES["le"]]


def _seconds_rule() -> dict[str, Any]:
    """`seconds` counts frames at the default rate: an explicit `fps` goes with `num_frames` instead."""
    return {"anyOf": [_absent("seconds"), _absent("fps"), {"required": ["num_frames"]}]}


def _absent(*names: str) -> dict[str, Any]:
    return {"properties": {name: False for name in names}}


def _drop_nulls(schema: dict[str, Any]) -> None:
    """Optional fields are left out, never null: drop pydantic's null branches and null defaults."""
    for prop in schema.get("properties", {}).values():
        branches = prop.pop("anyOf", None)
        if branches is not None:
            kept = [b for b in branches if b.get("type") != "null"]
            if len(kept) == 1:
                prop.update(kept[0])
            else:
                prop["anyOf"] = kept
        if prop.get("default", 0) is None:
            prop.pop("default")


def _schedule_rules() -> list[dict[str, Any]]:
    """What the engine checks across the schedule's fields, as the schema states it: a list excludes the
    other list and `num_inference_steps` (its length is the step count) and runs no cache; a `scheduler`
    or `shift` runs no `mag` cache (its ratios are calibrated on the pair's own schedule)."""
    no_cache = {"cache": {"pattern": NO_CACHE_PATTERN}}
    lists = [
        _absent(*SCHEDULE_LISTS),
        {"properties": {**_absent("sigmas", "num_inference_steps")["properties"], **no_cache}},
        {"properties": {**_absent("timesteps", "num_inference_steps")["properties"], **no_cache}},
    ]
    mag = [_absent("scheduler", "shift"), {"properties": {"cache": {"pattern": NO_MAG_PATTERN}}}]
    return [{"anyOf": lists}, {"anyOf": mag}]


def _fits(spec: dict[str, Any] | None, value: Any) -> bool:
    """Whether one of the schema's own examples keeps to a narrowed property (the keywords narrowing sets)."""
    if spec is None:
        return False
    if isinstance(value, list):
        array = spec.get("anyOf", [spec])[0]  # a list property: an array, or one bare value
        return array.get("minItems", 0) <= len(value) <= array.get("maxItems", len(value))
    if "enum" in spec:
        return value in spec["enum"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return spec.get("minimum", value) <= value <= spec.get("maximum", value)
    if isinstance(value, str) and "pattern" in spec:
        return re.search(spec["pattern"], value) is not None
    return True


def narrow_schedule(create: dict[str, Any], limits: ScheduleLimits) -> None:
    """The create body's schema (`VideoCreateParams`'s, in place) within what a deployment's pair lets a
    request set (`ScheduleBounds.problems`, run by the ingress on the request with the pair's defaults):
    `scheduler` the names the family runs within the bounds, `num_inference_steps` and a list's length
    (the step count) within the step bounds, `shift` and `guidance_scale` within theirs; a field no
    request may set is left out, so the schema refuses it as the server does (400 naming it). With the
    pair's own list, a body that runs it (no list of its own, the default step count) may ask for no
    cache, and with the pair's own scheduler or shift no body may ask for `mag` (`cache_refusal`). The
    schema's examples that set what the pair refuses are left out."""
    props = create["properties"]
    bounds = limits.bounds
    gone = set() if limits.flow else set(SCHEDULE_FIELDS)
    if not limits.schedulers:
        gone.add("scheduler")
    if not bounds.explicit_schedule:
        gone.update(SCHEDULE_LISTS)
    for name in gone:
        props.pop(name, None)
    if "scheduler" in props:
        props["scheduler"]["enum"] = list(limits.schedulers)
        props["scheduler"]["description"] = (
            f"the denoising scheduler: {' or '.join(limits.schedulers)}; the model pair's when left out"
        )
    steps = props["num_inference_steps"]
    steps["minimum"] = max(steps["minimum"], bounds.min_steps)
    steps["maximum"] = min(steps["maximum"], bounds.max_steps)
    for name in SCHEDULE_LISTS:
        if name in props:
            array = props[name]["anyOf"][0]
            array["minItems"] = max(array["minItems"], bounds.min_steps)
            array["maxItems"] = min(array["maxItems"], bounds.max_steps)
            if bounds.min_steps > 1:  # a bare value is a one-step list
                props[name]["anyOf"] = [array]
    if "shift" in props:
        shift = props["shift"]
        if bounds.min_shift is not None:
            shift.pop("exclusiveMinimum", None)  # min_shift > 0
            shift["minimum"] = bounds.min_shift
        if bounds.max_shift is not None:
            shift["maximum"] = min(shift["maximum"], bounds.max_shift)
    if bounds.max_guidance_scale is not None:
        scale = props["guidance_scale"]
        scale["maximum"] = min(scale["maximum"], bounds.max_guidance_scale)
    create["examples"] = [e for e in create.get("examples", []) if all(_fits(props.get(k), v) for k, v in e.items())]
    rules = create.setdefault("allOf", [])
    if limits.default_list:  # (a body with a list of its own runs no cache by _schedule_rules)
        other_steps = {"properties": {"num_inference_steps": {"not": {"const": limits.default_steps}}}}
        no_cache = {"properties": {"cache": {"pattern": NO_CACHE_PATTERN}}}
        rules.append({"anyOf": [{**other_steps, "required": ["num_inference_steps"]}, no_cache]})
    if limits.default_schedule:
        rules.append({"properties": {"cache": {"pattern": NO_MAG_PATTERN}}})


def _sizes_pattern(limits: RequestLimits) -> str:
    """`size`'s exact pattern within a pixel budget: per set of allowed heights, the widths that have it."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for width in SIDES:
        heights = tuple(h for h in SIDES if limits.size_allowed(width, h))
        if heights:
            groups.setdefault(heights, []).append(width)
    alternatives = ["(?:{})x(?:{})".format("|".join(map(str, ws)), "|".join(map(str, hs))) for hs, ws in groups.items()]
    return "^(?:{})$".format("|".join(alternatives))


def narrow_limits(create: dict[str, Any], limits: RequestLimits) -> None:
    """The create body's schema (in place) within the operator's limits on a request (`ingress.limits`, checked
    by the ingress on the resolved request; the pair's defaults lie within them). A limited size is taken as
    `size` only: `width` and `height` are left out (a list of sizes or a pixel budget over two fields is a
    cross-field rule too large for schema tools), `size` lists the allowed sizes or spells the budget. A frame
    limit narrows `num_frames` and, where `seconds` counts the frames (no `num_frames`), `seconds` within the
    existing `seconds` rule's one `anyOf`. Steps (a list's length too) and guidance narrow their maxima. The
    GPU-seconds limit depends on measured step times: it is described (`x-srserve-max-gpu-s`), not stated."""
    props = create["properties"]
    if limits.limits_size:
        for side in ("width", "height"):
            props.pop(side, None)
        size = props["size"]
        if limits.sizes is not None:
            size["enum"] = list(limits.sizes)
            size["description"] = f"WIDTHxHEIGHT: one of {', '.join(limits.sizes)} (this deployment's sizes)"
        else:
            size["pattern"] = _sizes_pattern(limits)
            size["description"] = (
                f"WIDTHxHEIGHT, each a multiple of {SIDE_MULTIPLE}, width x height at most {limits.max_pixels}"
            )
    seconds_fit = SECONDS
    if limits.max_frames is not None:
        frames = props["num_frames"]
        frames["enum"] = [f for f in frames["enum"] if f <= limits.max_frames]
        frames["maximum"] = frames["enum"][-1]
        seconds_fit = [s for s in SECONDS if frames_for_seconds(int(s), DEFAULT_FPS) <= limits.max_frames]
        branches = [_absent("seconds"), {"required": ["num_frames"]}]
        if seconds_fit:  # (the seconds rule's `fps` branch, now with the seconds that fit)
            branches.append({"properties": {"fps": False, "seconds": {"enum": seconds_fit}}})
        rules = create["allOf"]
        rules[rules.index(_seconds_rule())] = {"anyOf": branches}
    if limits.max_steps is not None:
        steps = props["num_inference_steps"]
        steps["maximum"] = min(steps["maximum"], limits.max_steps)
        for name in SCHEDULE_LISTS:
            if name in props:
                array = props[name]["anyOf"][0]
                array["maxItems"] = min(array["maxItems"], limits.max_steps)
    if limits.max_guidance_scale is not None:
        scale = props["guidance_scale"]
        scale["maximum"] = min(scale["maximum"], limits.max_guidance_scale)
    if limits.max_gpu_s is not None:
        create["x-srserve-max-gpu-s"] = limits.max_gpu_s
        create["description"] += (
            f"\n\nThis deployment refuses a request whose predicted cost is above {limits.max_gpu_s:g} GPU-seconds "
            "(400 naming max_gpu_s): its steps priced with the pools' measured step times per megapixel-frame "
            "(twice with guidance above 1), for the most sketch steps its switch allows. No JSON Schema can state "
            "it: it moves with the measurements."
        )

    def fits(example: dict[str, Any]) -> bool:
        counted = "seconds" in example and "num_frames" not in example
        return all(_fits(props.get(k), v) for k, v in example.items()) and (
            not counted or example["seconds"] in seconds_fit
        )

    kept = [e for e in create.get("examples", []) if fits(e)]
    create["examples"] = kept or [{"prompt": "a red fox running through snow"}]  # the pair's defaults fit


def _create_schema(schema: dict[str, Any]) -> None:
    _drop_nulls(schema)
    _or_one_value(schema)
    schema["allOf"] = [_seconds_rule(), *_schedule_rules()]
    schema["examples"] = [
        {"prompt": "a red fox running through snow", "size": "64x64", "seconds": "1"},
        {"prompt": "a lighthouse at dusk", "num_inference_steps": 8, "switch": "fixed:3", "seed": 5},
        {
            "prompt": "a paper boat on a stream",
            "scheduler": "euler",
            "timesteps": [1000, 750, 500, 250],
            "shift": 5.0,
            "guidance_scale": 1.0,
            "switch": "fixed:2",
        },
    ]


Side = Annotated[int, Field(multiple_of=SIDE_MULTIPLE, **SIDE)]
_SET = {"uniqueItems": True}  # distinct values; the server runs them from the highest down


def _schedule_list(item: Any) -> Any:
    return Annotated[list[item], Field(min_length=1, max_length=MAX_STEPS, json_schema_extra=_SET)]


def _or_one_value(schema: dict[str, Any]) -> None:
    """A list property that also takes one bare value (`VideoCreateParams._one_value_is_a_list`)."""
    for name in SCHEDULE_LISTS:
        prop = schema["properties"][name]
        array = {k: v for k, v in prop.items() if k not in ("title", "description")}
        for key in array:
            prop.pop(key)
        prop["anyOf"] = [array, array["items"]]


class VideoCreateParams(BaseModel):
    """`POST /v1/videos`: the openai SDK's fields plus srserve's (sent by the SDK as `extra_body`).

    As JSON the values have these types; as multipart/form-data (what the openai SDK sends) or a
    urlencoded form, each value is the text of one. Leave a field out for its default; null is refused.
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_create_schema)

    prompt: Annotated[str, Field(pattern=PROMPT_PATTERN, **engine_limits("prompt"))] = Field(
        description="what the video shows; must contain non-whitespace text"
    )
    model: str | None = Field(None, description="the served model pair (GET /v1/models); the only value allowed")
    seconds: Literal[tuple(SECONDS)] | None = Field(  # type: ignore[valid-type]
        None,
        description=(
            f"clip length in seconds at {DEFAULT_FPS} fps, mapped to 4k+1 frames; for another `fps` give "
            "`num_frames` instead"
        ),
    )
    size: Annotated[str, Field(pattern=SIZE_PATTERN)] | None = Field(
        None, description="WIDTHxHEIGHT, each a multiple of 16; `width`/`height` take precedence"
    )
    negative_prompt: Annotated[str, Field(pattern=NO_NUL_PATTERN, **engine_limits("negative_prompt"))] | None = None
    height: Side | None = Field(None, description="pixels; the model pair's default when left out")
    width: Side | None = Field(None, description="pixels; the model pair's default when left out")
    num_frames: Annotated[int, Field(json_schema_extra={"enum": FRAME_COUNTS}, **FRAMES)] | None = Field(
        None, description="4k+1 frames; takes precedence over `seconds`"
    )
    num_inference_steps: Annotated[int, Field(**engine_limits("num_inference_steps"))] | None = None
    guidance_scale: Annotated[float, Field(**engine_limits("guidance_scale"))] | None = None
    seed: Annotated[int, Field(**engine_limits("seed"))] | None = None
    scheduler: SchedulerName | None = Field(
        None, description=f"the denoising scheduler: {' or '.join(SCHEDULER_NAMES)}; the model pair's when left out"
    )
    timesteps: _schedule_list(Timestep) | None = Field(  # type: ignore[valid-type]
        None,
        description=(
            "an explicit schedule, one timestep per step, before the shift (a distilled model's published list, "
            "e.g. [1000, 750, 500, 250]): distinct, run from the highest down; its length is the step count. "
            "In a form: comma-separated text ('1000,750,500,250'), repeated fields, or `timesteps[]` fields"
        ),
    )
    sigmas: _schedule_list(Sigma) | None = Field(  # type: ignore[valid-type]
        None,
        description=(
            "an explicit schedule as sigmas before the shift (timesteps t are sigmas t / 1000): distinct, run from "
            "the highest down; its length is the step count. In a form: as `timesteps`"
        ),
    )
    shift: Shift | None = Field(None, description="the flow shift; the model pair's when left out")
    switch: Annotated[str, Field(pattern=SWITCH_PATTERN)] | None = Field(
        None,
        description=(
            "when the sketch model hands over: fixed:K (K large-model steps; K at or past the step count "
            "runs the large model only), fixed:0.3 (a fraction), adaptive, adaptive:TAU or adaptive:TAU:MIN:MAX; "
            "load, load:TAU or load:TAU:MIN:MAX: adaptive under a cap the server lowers under load"
        ),
    )
    cache: Annotated[str, Field(pattern=CACHE_PATTERN)] | None = Field(
        None,
        description=(
            "step caches: KIND for both stages, or sketch=KIND,render=KIND; KIND is none, first_block[:THRESHOLD], "
            "taylorseer[:INTERVAL] or mag[:THRESHOLD]; within the server's limits (default: the pools' own)"
        ),
    )
    lora: Annotated[str, Field(pattern=LORA_PATTERN)] | None = Field(
        None,
        description=(
            "a LoRA adapter the server configures for this model pair: NAME or NAME:SCALE (SCALE in [0, 4]; "
            "default: the adapter's own); never a file"
        ),
    )
    fps: Annotated[int, Field(**FPS)] | None = Field(
        None, description=f"the mp4's frame rate ({DEFAULT_FPS} by default); with `num_frames`, not with `seconds`"
    )
    conditioning_scale: Annotated[float, Field(**engine_limits("conditioning_scale"))] | None = Field(
        None,
        description=(
            "video editing (VACE pairs only): how strongly the video, mask and reference images steer each step "
            "(1 when left out, as in diffusers' WanVACEPipeline)"
        ),
    )
    deadline_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="seconds from submission after which the job fails with deadline_exceeded"
    )
    priority: Annotated[int, Field(ge=0, le=PRIORITY_LIMIT)] | None = Field(
        None,
        description=(
            "0 (the default) or more, up to the caller's tenant's max_priority; stored with the job (queue "
            "ordering by it comes with the store-side queue)"
        ),
    )

    @field_validator(*SCHEDULE_LISTS, mode="before")
    @classmethod
    def _one_value_is_a_list(cls, value: Any) -> Any:
        """One bare value is a one-step list: in a form the two are the same text."""
        return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int | None) -> int | None:
        if value is not None and (value - 1) % FRAME_STRIDE:
            raise ValueError(f"must be of the form 4k+1 (1, 5, 9, ..., {FRAMES['le']}), got {value}")
        return value


def _property_types(properties: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(each field's JSON type, each list field's item type); a list field (array or one bare value) is an
    array of its item type."""
    fields, items = {}, {}
    for name, spec in properties.items():
        arrays = [b for b in spec.get("anyOf", [spec]) if b.get("type") == "array"]
        if arrays:
            fields[name], items[name] = "array", arrays[0]["items"]["type"]
        else:
            fields[name] = spec["type"]
    return fields, items


FIELD_TYPES, ITEM_TYPES = _property_types(VideoCreateParams.model_json_schema()["properties"])
# ITEM_TYPES: the item type of each list field (what a form's list text holds).
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BRACKETS = "[]"  # the openai SDK sends a list as one `NAME[]` field per item


def _typed(key: str, value: str, kind: str) -> int | float | None:
    """A form text as the JSON value of `kind` ('integer' or 'number'), or None if it spells none."""
    if kind == "integer" and _INTEGER.fullmatch(value):
        return int(value)
    if kind == "number" and _NUMBER.fullmatch(value):
        return float(value)
    return None


def _a(kind: str) -> str:
    return f"{'an' if kind == 'integer' else 'a'} {kind}"


def form_values(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """A form's text values, typed as the JSON body would carry them (so one model checks both).

    An array field's items are comma-separated text (`timesteps=1000,750,500,250`), in one field or
    repeated ones (`timesteps=1000&timesteps=750`, as form encoders send a list), or one `timesteps[]`
    field per item, as the openai SDK sends a list; the items of all of them, in order. Any other
    field is given once.
    """
    body: dict[str, Any] = {}
    for key, value in items:
        name = key.removesuffix(_BRACKETS)
        if name in ITEM_TYPES and isinstance(value, str):
            kind = ITEM_TYPES[name]
            parts = [_typed(name, part.strip(), kind) for part in value.split(",")]
            if any(part is None for part in parts):
                example = "1000,750,500,250" if kind == "integer" else "1,0.75,0.5,0.25"
                raise InvalidRequest(
                    f"{name}: expected comma-separated {kind}s (e.g. '{example}'), got {value!r}", param=name
                )
            body.setdefault(name, []).extend(parts)
            continue
        if key in body:
            raise InvalidRequest(f"{key}: given more than once", param=key)
        kind = FIELD_TYPES.get(key)
        if not isinstance(value, str) or kind in (None, "string"):
            body[key] = value
        elif (typed := _typed(key, value, kind)) is not None:
            body[key] = typed
        else:
            raise InvalidRequest(f"{key}: expected {_a(kind)}, got {value!r}", key)
    return body


GRAMMARS = {
    "prompt": "text with a non-whitespace character and no NUL",
    "negative_prompt": "text without NUL",
    "size": f"WIDTHxHEIGHT, each a multiple of {SIDE_MULTIPLE} in {SIDE['ge']}..{SIDE['le']} (e.g. '832x480')",
    "switch": SWITCH.syntax,
    "cache": CACHE.syntax,
    "lora": LORA.syntax,
    "seconds": f"whole seconds as text, '1'..'{SECONDS[-1]}'",
    "scheduler": " or ".join(repr(n) for n in SCHEDULER_NAMES),
}


def _problem(err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
    kind = err.get("type")
    if kind == "extra_forbidden":
        return f"{loc}: unknown field"
    if kind in ("string_pattern_mismatch", "literal_error") and loc in GRAMMARS:
        return f"{loc}: expected {GRAMMARS[loc]}, got {err.get('input')!r}"
    return f"{loc}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}"


def parse_create(body: dict[str, Any]) -> VideoCreateParams:
    """The create body checked against its published schema; errors name the field."""
    body = dict(body)
    for key, value in body.items():
        if value is None:
            raise InvalidRequest(f"{key}: must not be null (leave it out for the default)", param=key)
        if FIELD_TYPES.get(key) == "integer":
            body[key] = _json_integer(value)
        elif ITEM_TYPES.get(key) == "integer" and isinstance(value, list):
            body[key] = [_json_integer(v) for v in value]
    try:
        params = VideoCreateParams.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
        first = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else None
        raise InvalidRequest("; ".join(_problem(e) for e in errors), param=first or None) from None
    given = params.model_fields_set
    for name in SCHEDULE_LISTS:
        for other in ("num_inference_steps", *SCHEDULE_LISTS):
            if name in given and other in given and other != name:
                why = "set one list" if other in SCHEDULE_LISTS else "the list's length is the step count"
                raise InvalidRequest(f"{other}: leave it out with {name} ({why})", param=other)
    if params.seconds is not None and params.fps is not None and params.num_frames is None:
        raise InvalidRequest(
            f"fps: `seconds` counts frames at {DEFAULT_FPS} fps; for {params.fps} fps give `num_frames` "
            f"(4k+1, at most {FRAMES['le']}) instead of `seconds`",
            param="fps",
        )
    return params


def _json_integer(value: Any) -> Any:
    """JSON Schema's integers include 5.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def check_model(asked: str | None, served: str) -> None:
    """A request may name the served model pair (or none); any other name is a client error."""
    if asked is not None and asked != served:
        raise InvalidRequest(f"model: unknown model {asked!r}; this server serves {served!r}", param="model")


def schedule_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """An edge's explicit schedule as the engine runs it: each list's distinct values from the highest
    (noise) down. The published schema states a set (`uniqueItems`), which it can, not an order, which
    it cannot; a repeated value is refused, naming the field."""
    out = dict(fields)
    for name in SCHEDULE_LISTS:
        values = out.get(name)
        if not isinstance(values, list) or not all(type(v) in (int, float) for v in values):
            continue  # not numbers: the engine's validation names the field
        ordered = sorted(values, reverse=True)
        for a, b in pairwise(ordered):
            if a == b:
                raise InvalidRequest(f"{name}: {a} is given twice (each step runs at its own value)", param=name)
        out[name] = ordered
    return out


def engine_request(fields: dict[str, Any], default_steps: int) -> GenerationRequest:
    """An edge's fields as the engine's request (switch steps capped at the step count, the schedule's
    lists ordered: `schedule_fields`); errors name the field."""
    fields = schedule_fields(fields)
    try:
        return GenerationRequest.with_capped_switch(fields, default_steps)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc), param=error_field(exc)) from None


def create_request(
    body: dict[str, Any], served_model: str, default_steps: int, size_only: bool = False
) -> tuple[GenerationRequest, float | None]:
    """A create body (JSON types) as the engine's request and the job's deadline: HTTP's one conversion.
    `size_only`: the deployment limits the size (`narrow_limits`), which a body then gives as `size`."""
    params = parse_create(body)
    check_model(params.model, served_model)
    for side in ("width", "height"):
        if size_only and side in params.model_fields_set:
            raise InvalidRequest(f"{side}: this deployment takes the video's size as `size` (WIDTHxHEIGHT)", side)
    fields = params.model_dump(exclude_none=True, exclude={"model", "seconds", "size", "deadline_s", "priority"})
    if params.size is not None:
        width, height = (int(v) for v in params.size.split("x"))
        fields.setdefault("width", width)
        fields.setdefault("height", height)
    if params.seconds is not None and params.num_frames is None:
        fields["num_frames"] = frames_for_seconds(int(params.seconds), DEFAULT_FPS)
    return engine_request(fields, default_steps), params.deadline_s


_PRIORITY = TypeAdapter(Annotated[int, Field(strict=True, ge=0, le=PRIORITY_LIMIT)])


def create_priority(body: dict[str, Any]) -> int:
    """The create body's `priority` (0 when left out) as its published schema bounds it; the tenant's own
    bound is the ingress's (`IngressCore.check_priority`)."""
    try:
        return _PRIORITY.validate_python(_json_integer(body.get("priority", 0)))
    except ValidationError as exc:
        raise InvalidRequest(f"priority: {exc.errors()[0]['msg']}", param="priority") from None


# -- responses ------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    message: str = Field(description="what went wrong, naming the field")
    type: str
    param: str | None = Field(description="the request field at fault, if one is")
    code: str = Field(
        description=(
            "stable, shared with gRPC: invalid_argument, unauthenticated, not_found, failed_precondition, "
            "request_too_large, unsupported_media_type, range_not_satisfiable, resource_exhausted, unavailable"
        )
    )


class ErrorResponse(BaseModel):
    """Every error answer: `{"error": {...}}` as the OpenAI API sends it."""

    error: ErrorBody


class VideoError(BaseModel):
    code: str = Field(description="deadline_exceeded, cancelled, invalid_argument, internal or stalled")
    message: str


class InputImageSummary(BaseModel):
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="of the bytes sent")
    media_type: Literal["image/png", "image/jpeg", "image/webp"]
    width: int = Field(ge=1, description="pixels, as shown (after the EXIF orientation)")
    height: int = Field(ge=1)


class InputVideoSummary(BaseModel):
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="of the bytes sent")
    media_type: Literal["video/mp4"]
    width: int = Field(ge=1, description="pixels")
    height: int = Field(ge=1)
    num_frames: int = Field(ge=1)


class LoraSummary(BaseModel):
    name: str = Field(description="the adapter, as the server configures it")
    scale: float = Field(ge=0, le=4)
    sketch: bool = Field(description="the sketch (large) model ran with it")
    render: bool = Field(description="the render (small) model ran with it (false: it has no render file)")
    fused: bool = Field(description="merged into the pool's weights at load (every job there runs with it)")


class ScheduleSummary(BaseModel):
    """The denoising schedule the job runs, as its request names it with the pair's defaults applied."""

    scheduler: SchedulerName | None = Field(description="unipc or euler; null: the model folder's own")
    shift: float | None = Field(description="the flow shift; null: the model folder's")
    timesteps: list[int] | None = Field(description="the explicit timestep list, before the shift; null: none")
    sigmas: list[float] | None = Field(
        description="the explicit sigma list, before the shift; null: none (neither list: num_steps evenly spaced)"
    )


class SrserveDetails(BaseModel):
    """srserve's view of the job: its state machine, step progress, handoff and timeline."""

    state: JobState
    step: int = Field(ge=0, description="step within the current stage")
    total: int = Field(ge=0)
    switch_step: int | None = Field(description="the sketch's last step; null until the handoff")
    num_steps: int = Field(ge=0)
    handoff_bytes: int = Field(ge=0)
    latents_sha256: str | None = Field(description="digest of the final latents (float32), for exactness checks")
    attempts: dict[str, int] = Field(description="attempts per stage (a lost replica's stage is retried)")
    timeline: dict[str, float] = Field(description="stage edge -> unix time")
    replicas: dict[str, str] = Field(description="stage -> replica id")
    switch_cap: int | None = Field(description="the load-aware switch's cap on the sketch steps; null otherwise")
    switch_reason: str | None = Field(description="why that cap: unmeasured, adaptive, balance, slo or floor")
    cache: str = Field(description="the step caches the job runs (as in the request's `cache`), or none")
    schedule: ScheduleSummary
    input_reference: InputImageSummary | None = Field(
        description="the input image of an image-to-video job (as the server received it); null for text-to-video"
    )
    video: InputVideoSummary | None = Field(
        description="the input video of a video-editing job (as the server received it); null otherwise"
    )
    mask: InputVideoSummary | None = Field(
        description="the mask of a video-editing job (white: regenerate, black: keep); null for none"
    )
    reference_images: list[InputImageSummary] | None = Field(
        description="the reference images of a video-editing job, in order; null for none"
    )
    conditioning_scale: float | None = Field(
        description="a video-editing job's conditioning scale as requested; null: the default (1)"
    )
    lora: LoraSummary | None = Field(description="the job's LoRA adapter and which models apply it; null for none")
    priority: int = Field(ge=0, description="the priority the job was created with")


class Video(BaseModel):
    """The openai SDK's `Video`, plus srserve's details under `srserve`."""

    id: str = Field(pattern=VIDEO_ID_PATTERN)
    object: Literal["video"]
    created_at: int
    completed_at: int | None
    expires_at: int | None
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    model: str
    prompt: str | None
    seconds: str
    size: str
    error: VideoError | None
    remixed_from_video_id: str | None
    srserve: SrserveDetails


class VideoList(BaseModel):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"]
    deleted: bool


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    jobs: dict[str, int] = Field(description="jobs in the store per state")
    driving: int = Field(ge=0, description="jobs this ingress replica's orchestrator drives")


class ProgressEvent(BaseModel):
    """The data of an SSE `progress` event (its `id:` is `seq`); a final `done` event carries the Video."""

    seq: int
    job_id: str
    state: JobState
    step: int
    total: int
    progress: int = Field(ge=0, le=100)
    time: float
    message: str


MODELS: list[type[BaseModel]] = [VideoCreateParams, ErrorResponse, Video, VideoList, ProgressEvent]
