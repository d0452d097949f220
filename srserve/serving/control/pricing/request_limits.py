"""The operator's limits on one request (`ingress.limits`): what a single job may ask for, refused before it queues.

A shared service cannot let one request hold a GPU for minutes while small ones wait behind it. Each limit
is refused as InvalidRequest naming the field and the limit (HTTP 400, gRPC INVALID_ARGUMENT):

- `sizes` (a list of WIDTHxHEIGHT) or `max_pixels` (width x height per frame): the video's size;
- `max_frames`, `max_steps`, `max_guidance_scale`: the frames, the denoising steps (a schedule list's length
  included) and the guidance scale;
- `max_gpu_s`: the request's predicted cost in GPU-seconds (`predicted_gpu_s`), priced with the pools'
  measured step times per unit of work (`work_units`: megapixel-frames, twice with classifier-free guidance),
  for the most sketch steps its switch allows. Before a pool has a measured step, the operator's
  `assumed_step_s` prices it; without that the cost is unknown and nothing is refused for it.

The static limits are decided from the request alone and the published create schema states them exactly;
the cost depends on the measured step times, which no schema can state (it is described there). The pair's
defaults must lie within the static limits (`default_problems`, checked when the config is read): a request
that leaves a field out never gets a value it could not ask for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from srserve.engine.grammar import field_limits
from srserve.engine.request import GenerationRequest, RequestDefaults, ResolvedRequest, SwitchPolicy, resolve_request
from srserve.serving.control.errors import InvalidRequest
from srserve.serving.control.jobs import Job
from srserve.serving.control.pricing.pool_work import StageTimes, measure_stage_times
from srserve.serving.control.store.work_snapshot import WorkSnapshot

SIDE_MULTIPLE = 16  # GenerationRequest's height/width validator
_SIDE = field_limits(GenerationRequest, "height")
SIDES = range(_SIDE["ge"], _SIDE["le"] + 1, SIDE_MULTIPLE)  # every side the engine takes
MEGA = 1_000_000


def parse_size(text: str) -> tuple[int, int]:
    """`WIDTHxHEIGHT` as (width, height); ValueError unless both are sides the engine takes."""
    width, sep, height = text.partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) not in SIDES or int(height) not in SIDES:
        raise ValueError(
            f"size {text!r}: expected WIDTHxHEIGHT, each a multiple of {SIDE_MULTIPLE} in {SIDES[0]}..{SIDES[-1]}"
        )
    return int(width), int(height)


class StepPrices(BaseModel):
    """Seconds of one denoising step of one megapixel-frame of video without guidance (`work_units` = 1),
    per phase: what the operator assumes until the pool has run a step (a deployment's planner profile says)."""

    model_config = ConfigDict(extra="forbid")

    sketch: float = Field(gt=0, description="the large model's step, on one replica of the sketch pool")
    render: float = Field(gt=0, description="the small model's step, on one replica of the render pool")


class RequestLimits(BaseModel):
    """What one request may ask for on this deployment (ingress.limits); every limit unset: the engine's own."""

    model_config = ConfigDict(extra="forbid")

    sizes: list[str] | None = Field(
        None, description="the sizes a request may have, WIDTHxHEIGHT (e.g. 832x480); not with max_pixels"
    )
    max_pixels: Annotated[int, Field(ge=SIDE_MULTIPLE * SIDE_MULTIPLE)] | None = Field(
        None, description="the most pixels per frame (width x height), any aspect; not with sizes"
    )
    max_frames: Annotated[int, Field(ge=1)] | None = Field(None, description="the most frames (4k+1) a video may have")
    max_steps: Annotated[int, Field(ge=1)] | None = Field(None, description="the most denoising steps")
    max_guidance_scale: Annotated[float, Field(ge=0)] | None = Field(None, description="the highest guidance scale")
    max_gpu_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="the most GPU-seconds a request's predicted cost may be (measured step times)"
    )
    assumed_step_s: StepPrices | None = Field(
        None, description="step prices until a pool has a measured step; unset: no cost refusal until then"
    )

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("sizes: give at least one size (or leave it out: any size)")
            for text in value:
                parse_size(text)
            value = list(dict.fromkeys(value))
        return value

    @model_validator(mode="after")
    def _one_size_limit(self) -> RequestLimits:
        if self.sizes is not None and self.max_pixels is not None:
            raise ValueError("limits: give sizes or max_pixels, not both")
        return self

    @property
    def limits_size(self) -> bool:
        """Whether the size is limited (the HTTP body then takes it as `size` only)."""
        return self.sizes is not None or self.max_pixels is not None

    def size_allowed(self, width: int, height: int) -> bool:
        if self.sizes is not None:
            return f"{width}x{height}" in self.sizes
        return self.max_pixels is None or width * height <= self.max_pixels

    def problems(self, request: Any) -> list[tuple[str, str]]:
        """(field, message) per static limit `request` (a ResolvedRequest) is outside, each naming the limit."""
        out: list[tuple[str, str]] = []
        width, height = request.width, request.height
        if not self.size_allowed(width, height):
            if self.sizes is not None:
                allowed = f"sizes: {', '.join(self.sizes)}"
            else:
                allowed = f"max_pixels {self.max_pixels} (width x height is {width * height})"
            out.append(("size", f"size: {width}x{height} (width x height) is outside this deployment's {allowed}"))
        if self.max_frames is not None and request.num_frames > self.max_frames:
            out.append(("num_frames", f"num_frames: {request.num_frames} is above max_frames {self.max_frames}"))
        if self.max_steps is not None and request.num_inference_steps > self.max_steps:
            out.append(
                (
                    "num_inference_steps",
                    f"num_inference_steps: {request.num_inference_steps} steps (a schedule list's length counts) "
                    f"is above max_steps {self.max_steps}",
                )
            )
        if self.max_guidance_scale is not None and request.guidance_scale > self.max_guidance_scale:
            out.append(
                (
                    "guidance_scale",
                    f"guidance_scale: {request.guidance_scale} is above max_guidance_scale {self.max_guidance_scale}",
                )
            )
        return out


def default_problems(limits: RequestLimits, defaults: RequestDefaults) -> list[str]:
    """What the pair's defaults (the request that sets nothing) break of the static limits: a start-up error."""
    plain = resolve_request(GenerationRequest(prompt="x"), defaults)
    return [f"the model pair's default {message}" for _, message in limits.problems(plain)]


def check_request(limits: RequestLimits, request: ResolvedRequest, where: str | None = None) -> None:
    """InvalidRequest naming the first static limit `request` is outside (`where`: the field carrying it,
    e.g. an uploaded handoff's)."""
    problems = limits.problems(request)
    if problems:
        param, message = problems[0]
        raise InvalidRequest(message if where is None else f"{where}: {message}", param=where or param)


# -- the predicted cost ------------------------------------------------------------------------------------


def work_units(width: int, height: int, num_frames: int, guidance_scale: float) -> float:
    """One step's work in megapixel-frames, doubled when classifier-free guidance runs (a second pass):
    what a measured step time is divided by, so a small job's step prices a large one's."""
    passes = 2 if guidance_scale > 1.0 else 1
    return width * height * num_frames * passes / MEGA


def job_units(job: Job) -> float | None:
    """A stored job's `work_units` (None when its request lacks a size: it prices nothing)."""
    r = job.request
    try:
        return work_units(int(r["width"]), int(r["height"]), int(r["num_frames"]), float(r["guidance_scale"]))
    except (KeyError, TypeError, ValueError):
        return None


def unit_step_times(jobs: Iterable[Job] | WorkSnapshot, now: float) -> StageTimes:
    """The pools' measured times (medians of recent jobs; a list in creation order or the store's snapshot),
    steps per `work_units`: the cost's prices."""
    return measure_stage_times(jobs, now, per=job_units)


def most_sketch_steps(switch: SwitchPolicy, num_steps: int) -> int:
    """The most steps the large model may run: a fixed switch's step, else the adaptive upper bound."""
    if switch.kind == "fixed":
        return min(switch.fixed_step(num_steps), num_steps)
    return switch.bounds(num_steps)[1]


def predicted_gpu_s(
    request: ResolvedRequest,
    times: StageTimes,
    devices: tuple[int, int] = (1, 1),
    assumed: StepPrices | None = None,
) -> float | None:
    """GPU-seconds the request may cost: its sketch and render steps at the measured (else `assumed`) unit
    step times times its `work_units`, plus the measured encode and decode, each times the devices of one
    replica of the pool running it (`devices`: sketch, render). None while a step time is unknown."""
    sketch_step = times.sketch_step_s if times.sketch_step_s is not None else assumed and assumed.sketch
    render_step = times.render_step_s if times.render_step_s is not None else assumed and assumed.render
    if not sketch_step or not render_step:
        return None
    n = request.num_inference_steps
    k = most_sketch_steps(request.switch, n)
    units = work_units(request.width, request.height, request.num_frames, request.guidance_scale)
    sketch_devices, render_devices = devices
    sketch = (k * sketch_step * units + (times.encode_s or 0.0)) * sketch_devices
    render = ((n - k) * render_step * units + (times.decode_s or 0.0)) * render_devices
    return sketch + render


def check_cost(
    limits: RequestLimits,
    request: ResolvedRequest,
    jobs: Iterable[Job] | WorkSnapshot,
    now: float,
    devices: tuple[int, int],
) -> float | None:
    """InvalidRequest when the request's predicted cost is above `max_gpu_s`; else the cost (None: unknown)."""
    if limits.max_gpu_s is None:
        return None
    cost = predicted_gpu_s(request, unit_step_times(jobs, now), devices, limits.assumed_step_s)
    if cost is not None and cost > limits.max_gpu_s and not math.isclose(cost, limits.max_gpu_s):
        raise InvalidRequest(
            f"max_gpu_s: the request's predicted cost, {cost:.1f} GPU-seconds ({request.width}x{request.height}, "
            f"{request.num_frames} frames, {request.num_inference_steps} steps), is above this deployment's "
            f"max_gpu_s {limits.max_gpu_s:g}; fewer pixels, frames or steps cost less",
            param=None,  # no one field: the size, frames and steps together
        )
    return cost
