"""The one request model shared by the CLI, the engine and the gRPC and HTTP APIs (each edge converts
into it once), with the grammar of its `switch` text (the `cache` text's is srserve.engine.denoising.cache's)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from srserve.engine.adapters.spec import AdapterConfig, LoraSpec, ResolvedLora, resolve_lora
from srserve.engine.denoising.cache import CachePolicy, CacheSpec
from srserve.engine.denoising.schedule import MAX_SHIFT, SchedulerName, Shift, Sigma, Timestep, check_decreasing
from srserve.engine.grammar import Grammar, Spelling, number

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**63 - 1
MAX_STEPS = 200
MAX_SIDE = 2048
MAX_FRAMES = 257
# Video editing (VACE): reference images a request may give (each adds a latent frame to every step).
MAX_REFERENCE_IMAGES = 4
MAX_CONDITIONING_SCALE = 10.0


class SwitchPolicy(BaseModel):
    """When the sketch model hands over to the render model.

    `fixed`: after `step` large-model steps, or after `round(fraction * N)` steps.
    `adaptive`: SRDiffusion's self-difference rule with threshold `tau`, bounded by
    `min_step`/`max_step` (defaults 10% / 60% of N, i.e. 5 / 30 of 50 steps).
    `load`: adaptive, with an upper bound the serving layer lowers while the sketch pool is the
    bottleneck or the SLO is at risk (srserve.serving.control.pricing.load_switch); the engine alone, with
    no load to look at, runs it as `adaptive`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fixed", "adaptive", "load"] = "adaptive"
    step: Annotated[int, Field(ge=0, le=MAX_STEPS)] | None = None
    fraction: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    tau: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    min_step: Annotated[int, Field(ge=0, le=MAX_STEPS)] | None = None
    max_step: Annotated[int, Field(ge=0, le=MAX_STEPS)] | None = None

    @model_validator(mode="after")
    def _check(self) -> SwitchPolicy:
        if self.kind == "fixed":
            if (self.step is None) == (self.fraction is None):
                raise ValueError("switch: a fixed switch needs exactly one of 'step' or 'fraction'")
        elif self.step is not None or self.fraction is not None:
            raise ValueError("switch: 'step'/'fraction' apply to a fixed switch only")
        if self.min_step is not None and self.max_step is not None and self.min_step > self.max_step:
            raise ValueError(f"switch: min_step ({self.min_step}) > max_step ({self.max_step})")
        return self

    @classmethod
    def parse(cls, text: str) -> SwitchPolicy:
        """Parse `fixed:10`, `fixed:0.3`, `adaptive`, `adaptive:0.01`, `adaptive:0.01:5:30` (and `load` alike)."""
        return cls.model_validate(SWITCH.fields(text))

    def bounds(self, num_steps: int) -> tuple[int, int]:
        """(min, max) number of sketch steps for an adaptive (or load) switch over `num_steps` steps."""
        lo = self.min_step if self.min_step is not None else round(0.1 * num_steps)
        hi = self.max_step if self.max_step is not None else round(0.6 * num_steps)
        return min(lo, num_steps), min(hi, num_steps)

    def fixed_step(self, num_steps: int) -> int:
        if self.step is not None:
            return self.step
        assert self.fraction is not None
        return round(self.fraction * num_steps)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.step if self.step is not None else self.fraction}"
        lo = "" if self.min_step is None else f":{self.min_step}:{self.max_step}"
        return f"{self.kind}:{self.tau}{lo}"


_STEP = number(SwitchPolicy, "step")
_FRACTION = number(SwitchPolicy, "fraction", point=True)  # with a '.': told apart from a step count
_TAU = number(SwitchPolicy, "tau")


def _switch_grammar(s: Spelling) -> str:
    colon = s.sep(":")
    bounds = f"{colon}{s.number('min_step', _STEP)}{colon}{s.number('max_step', _STEP)}"
    return (
        f"{s.word('kind', 'fixed')}{colon}(?:{s.number('step', _STEP)}|{s.number('fraction', _FRACTION)})"
        f"|{s.word('kind', 'adaptive', 'load')}(?:{colon}{s.number('tau', _TAU)}(?:{bounds})?)?"
    )


SWITCH = Grammar(
    "switch",
    _switch_grammar,
    "fixed:K, fixed:FRACTION, adaptive, adaptive:TAU or adaptive:TAU:MIN:MAX, or load alike "
    f"(K, MIN, MAX in 0..{MAX_STEPS}; FRACTION in [0, 1] with a '.'; TAU in (0, 1])",
)
# Validation context key: cap a switch text's step counts at the request's step count (`with_capped_switch`).
_CAP_SWITCH_AT = "srserve.cap_switch_at"


def capped_switch(fields: dict[str, Any], num_steps: int) -> dict[str, Any]:
    """A switch text's fields with its step counts capped at `num_steps`, as the engine runs them.

    `fixed:K` at or past the step count runs the large model for all steps (as `fixed:N` does);
    adaptive bounds past it are clipped as SwitchPolicy.bounds clips them, and a lower bound above
    the upper one meets it (the upper bound forces the switch first either way). Step counts outside
    the engine's range are left for SwitchPolicy to refuse.
    """

    def in_range(*counts: int | None) -> bool:
        return all(c is not None and 0 <= c <= MAX_STEPS for c in counts)

    out = dict(fields)
    if out.get("kind") == "fixed" and in_range(out.get("step")):
        out["step"] = min(out["step"], num_steps)
    elif in_range(out.get("min_step"), out.get("max_step")):
        out["max_step"] = min(out["max_step"], num_steps)
        out["min_step"] = min(out["min_step"], out["max_step"])
    return out


MediaType = Literal["image/png", "image/jpeg", "image/webp"]


class InputImage(BaseModel):
    """What a request says about its input image (image-to-video); never the pixels.

    The bytes travel beside the request: the serving layer stores them under `key` and hands the
    decoded image to the engine's sketch stage (`srserve.engine.inputs.image.load_image`), so a request
    stays small enough to validate, log and store as JSON.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    media_type: MediaType
    width: Annotated[int, Field(ge=1, le=1 << 16)]
    height: Annotated[int, Field(ge=1, le=1 << 16)]
    key: Annotated[str, Field(min_length=1, max_length=1024)] | None = None


class InputVideo(BaseModel):
    """What a request says about an input video (video editing: the video or its mask); never the pixels.

    As with InputImage, the frames travel beside the request (decoded by `srserve.engine.inputs.video_input`) and
    reach the sketch stage only; the description is what the request, its checks and the handoff carry.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    media_type: Literal["video/mp4"] = "video/mp4"
    width: Annotated[int, Field(ge=1, le=1 << 16)]
    height: Annotated[int, Field(ge=1, le=1 << 16)]
    num_frames: Annotated[int, Field(ge=1, le=1 << 16)]
    key: Annotated[str, Field(min_length=1, max_length=1024)] | None = None

    def shape(self) -> str:
        """`F frames of WxH`, for refusals that compare two shapes."""
        return f"{self.num_frames} frames of {self.width}x{self.height}"


class GenerationRequest(BaseModel):
    """One text-to-video (or, with `input_reference`, image-to-video; with `video`, `mask`, `reference_images`,
    video editing) request. Unset sizes take the model pair's defaults (an editing request's, its video's)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] = ""
    height: Annotated[int, Field(ge=16, le=MAX_SIDE)] | None = None
    width: Annotated[int, Field(ge=16, le=MAX_SIDE)] | None = None
    num_frames: Annotated[int, Field(ge=1, le=MAX_FRAMES)] | None = None
    num_inference_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    # CFG scale; at most 1 means one transformer forward per step (no unconditional branch). Unset: the pair's.
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    # The schedule (srserve.engine.denoising.schedule); each unset: the pair's default, else its folder's scheduler.
    scheduler: SchedulerName | None = None
    timesteps: Annotated[list[Timestep], Field(min_length=1, max_length=MAX_STEPS)] | None = None
    sigmas: Annotated[list[Sigma], Field(min_length=1, max_length=MAX_STEPS)] | None = None
    shift: Shift | None = None
    # A LoRA adapter the model pair configures (srserve.engine.adapters.spec): `NAME` or `NAME:SCALE`.
    lora: LoraSpec | None = None
    switch: SwitchPolicy = SwitchPolicy()
    # Step caches per stage (srserve.engine.denoising.cache); unset: none in the engine, the pools' in serving.
    cache: CacheSpec | None = None
    fps: Annotated[int, Field(ge=1, le=120)] = 16
    # The input image of an image-to-video request (its description; the pixels go to the sketch stage).
    input_reference: InputImage | None = None
    # Video editing (VACE pairs): a conditioning video, its mask (white: regenerate, black: keep), reference
    # images prepended as extra frames, and how strongly the VACE context steers (diffusers' default 1).
    video: InputVideo | None = None
    mask: InputVideo | None = None
    reference_images: Annotated[list[InputImage], Field(min_length=1, max_length=MAX_REFERENCE_IMAGES)] | None = None
    conditioning_scale: Annotated[float, Field(ge=0.0, le=MAX_CONDITIONING_SCALE)] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must contain non-whitespace text")
        return value

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_16(cls, value: int | None) -> int | None:
        if value is not None and value % 16:
            raise ValueError(f"must be a multiple of 16, got {value}")
        return value

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int | None) -> int | None:
        if value is not None and (value - 1) % 4:
            raise ValueError(f"must be of the form 4k+1 (1, 5, 9, ..., 81), got {value}")
        return value

    @field_validator("timesteps", "sigmas")
    @classmethod
    def _explicit_schedule(cls, value: list | None, info: ValidationInfo) -> list | None:
        return check_explicit_schedule(value, info)

    @field_validator("switch", mode="before")
    @classmethod
    def _switch_from_text(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        fields = SWITCH.fields(value)
        default_steps = (info.context or {}).get(_CAP_SWITCH_AT)
        if default_steps is None:
            return fields
        return capped_switch(fields, request_steps(info.data, default_steps))

    @model_validator(mode="after")
    def _switch_within_steps(self) -> GenerationRequest:
        steps = self.num_inference_steps
        if steps is None:
            return self
        sw = self.switch
        if sw.kind == "fixed" and sw.step is not None and sw.step > steps:
            raise ValueError(f"switch: step {sw.step} is beyond num_inference_steps ({steps})")
        if sw.kind != "fixed" and sw.max_step is not None and sw.max_step > steps:
            raise ValueError(f"switch: max_step {sw.max_step} is beyond num_inference_steps ({steps})")
        return self

    @model_validator(mode="after")
    def _caches_fit_schedule(self) -> GenerationRequest:
        """Step caches reuse or extrapolate one step's work for later steps; refuse them where that cannot hold."""
        if self.cache is None:
            return self
        for stage in ("sketch", "render"):
            refused = cache_refusal(stage, getattr(self.cache, stage), self)
            if refused is not None:
                raise ValueError(refused)
        return self

    @model_validator(mode="after")
    def _mask_fits_video(self) -> GenerationRequest:
        """A mask marks regions of the video: it needs one, with its frame count and size."""
        if self.mask is None:
            return self
        if self.video is None:
            raise ValueError("mask: a mask marks regions of a video; the request has no video")
        if (self.mask.num_frames, self.mask.width, self.mask.height) != (
            self.video.num_frames,
            self.video.width,
            self.video.height,
        ):
            raise ValueError(f"mask: {self.mask.shape()}, the video has {self.video.shape()}")
        return self

    @model_validator(mode="after")
    def _video_fits_output(self) -> GenerationRequest:
        """The video conditions every output frame at its position: the same frame count and size, when set."""
        if self.video is None:
            return self
        if (self.video.num_frames - 1) % 4 or self.video.num_frames > MAX_FRAMES:
            raise ValueError(
                f"video: {self.video.num_frames} frames; an edited video keeps its frame count, which must be "
                f"4k+1 (1, 5, 9, ..., 81) and at most {MAX_FRAMES}"
            )
        if self.video.width % 16 or self.video.height % 16 or max(self.video.width, self.video.height) > MAX_SIDE:
            raise ValueError(
                f"video: {self.video.width}x{self.video.height}; an edited video keeps its size, whose sides must be "
                f"multiples of 16 up to {MAX_SIDE}"
            )
        wanted = (self.num_frames, self.width, self.height)
        given = (self.video.num_frames, self.video.width, self.video.height)
        for name, want, have in zip(("num_frames", "width", "height"), wanted, given, strict=True):
            if want is not None and want != have:
                raise ValueError(
                    f"video: {self.video.shape()}, the request generates {name} {want} (an edited video keeps "
                    "its video's frame count and size)"
                )
        return self

    @classmethod
    def with_capped_switch(cls, fields: Mapping[str, Any], default_steps: int) -> GenerationRequest:
        """The request of `fields`, a switch text's step counts capped at its step count (its explicit list's
        length, else `default_steps`, when it sets none; `capped_switch`): the rule of the published grammar,
        which states each field's range but cannot compare two fields."""
        return cls.model_validate(fields, context={_CAP_SWITCH_AT: default_steps})


EDIT_FIELDS = ("video", "mask", "reference_images", "conditioning_scale")


def request_steps(fields: Mapping[str, Any], default_steps: int) -> int:
    """The step count a request's fields run: its own, else its explicit list's length, else `default_steps`."""
    steps = fields.get("num_inference_steps")
    if steps is not None:
        return steps
    explicit = fields.get("timesteps") if fields.get("timesteps") is not None else fields.get("sigmas")
    return len(explicit) if explicit is not None else default_steps


def cache_refusal(stage: str, policy: CachePolicy | None, request: Any) -> str | None:
    """Why the engine refuses `stage`'s cache `policy` for `request`'s schedule (None: it runs it).

    Step caches reuse or extrapolate one step's work for later steps: an explicit (few-step) schedule has
    no step to spare, and a `mag` cache's ratios hold only on the pair's own schedule. The serving layer
    asks the same question before it applies a pool's default cache.
    """
    if policy is None or not policy.enabled:
        return None
    if request.timesteps is not None or request.sigmas is not None:
        return (
            f"cache: a {stage} {policy.kind!r} cache reuses work across steps, and an explicit (few-step) "
            "schedule has none to spare: each of its steps moves the latent far; set cache 'none'"
        )
    if policy.kind == "mag" and (request.scheduler is not None or request.shift is not None):
        return (
            f"cache: the {stage} 'mag' cache's ratios are calibrated on the pair's own schedule, not on "
            "the request's scheduler or shift; calibrate for that schedule or set another cache"
        )
    return None


def check_explicit_schedule(value: list | None, info: ValidationInfo) -> list | None:
    """A `timesteps` or `sigmas` list (fields declared after num_inference_steps, sigmas after timesteps):
    strictly decreasing, one value per step when num_inference_steps is set, never both lists."""
    if value is None:
        return value
    name = str(info.field_name)
    check_decreasing(name, value)
    if name == "sigmas" and info.data.get("timesteps") is not None:
        raise ValueError("set either timesteps or sigmas, not both (timesteps t mean sigmas t / 1000)")
    steps = info.data.get("num_inference_steps")
    if steps is not None and len(value) != steps:
        raise ValueError(
            f"{len(value)} values for num_inference_steps {steps} (one per step; a request may leave "
            "num_inference_steps unset to take the list's length)"
        )
    return value


class RequestDefaults(BaseModel):
    """A model pair's defaults, applied to fields a request leaves unset: the output shape, the guidance
    scale and the schedule (e.g. a distilled pair: 4 euler steps at timesteps [1000, 750, 500, 250],
    shift 5, guidance 1)."""

    model_config = ConfigDict(extra="forbid")

    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = 50
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] = 5.0
    scheduler: SchedulerName | None = None
    timesteps: Annotated[list[Timestep], Field(min_length=1, max_length=MAX_STEPS)] | None = None
    sigmas: Annotated[list[Sigma], Field(min_length=1, max_length=MAX_STEPS)] | None = None
    shift: Annotated[float, Field(gt=0.0, le=MAX_SHIFT)] | None = None

    @field_validator("timesteps", "sigmas")
    @classmethod
    def _explicit_schedule(cls, value: list | None, info: ValidationInfo) -> list | None:
        return check_explicit_schedule(value, info)


# Validation context key: the pair's adapters a request's `lora` resolves against (`resolve_request`).
_ADAPTERS = "srserve.adapters"


class ResolvedRequest(GenerationRequest):
    """A request with every size set; what the stages and the handoff state carry."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)]
    lora: ResolvedLora | None = None

    @field_validator("lora", mode="before")
    @classmethod
    def _resolve_lora(cls, value: object, info: ValidationInfo) -> object:
        return resolve_lora(value, (info.context or {}).get(_ADAPTERS))


def resolve_request(
    request: GenerationRequest,
    defaults: RequestDefaults,
    *,
    adapters: Mapping[str, AdapterConfig] | None = None,
    **updates: Any,
) -> ResolvedRequest:
    """`request` with the defaults where it sets none and `updates` applied, checked as a whole once;
    its `lora` resolved against `adapters` (the pair's; none: a named adapter is refused as unknown).

    The schedule: a request's `timesteps`/`sigmas` set its step count when it sets none. The pair's
    default list applies only to a request that sets no list and no other step count; the pair's
    default scheduler and shift apply whenever the request leaves them unset.
    """
    data = request.model_dump()
    explicit = data["timesteps"] if data["timesteps"] is not None else data["sigmas"]
    if explicit is not None and data["num_inference_steps"] is None:
        data["num_inference_steps"] = len(explicit)
    if explicit is None and data["num_inference_steps"] in (None, defaults.num_inference_steps):
        data["timesteps"], data["sigmas"] = defaults.timesteps, defaults.sigmas
    video = data["video"]
    if video is not None:  # an edited video keeps its video's frame count and size
        for name in ("height", "width", "num_frames"):
            if data[name] is None:
                data[name] = video[name]
    for name in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale", "scheduler", "shift"):
        if data[name] is None:
            data[name] = getattr(defaults, name)
    return ResolvedRequest.model_validate({**data, **updates}, context={_ADAPTERS: adapters})


def stored_switch(request: Mapping[str, Any]) -> SwitchPolicy:
    """The switch of a stored request (a ResolvedRequest as JSON, as the job store keeps it)."""
    return SwitchPolicy.model_validate(request["switch"])


def describe_validation_error(exc: Exception) -> str:
    """One line per problem, each naming its field, for CLI and API error messages."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        field, msg = _located(err)
        lines.append(msg if field is not None and not err.get("loc") else f"{field or 'request'}: {msg}")
    return "; ".join(lines)


def _located(err: Mapping[str, Any]) -> tuple[str | None, str]:
    """A pydantic error's field and message. A whole-request rule (no location) names its field as its
    message's first word, as `switch: step 9 is beyond ...` or `cache: ...` do."""
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    field = ".".join(str(p) for p in err.get("loc", ()))
    if field:
        return field, msg
    head = msg.split(":", 1)[0]
    return (head if head in GenerationRequest.model_fields else None), msg


def error_field(exc: ValidationError) -> str | None:
    """The field of a validation error's first problem (an API error's `param`), if it names one."""
    errors = exc.errors()
    if not errors:
        return None
    return _located(errors[0])[0]
