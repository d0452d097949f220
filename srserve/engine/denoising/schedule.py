"""Which denoising schedule a request runs: the scheduler, an explicit timestep or sigma list, the shift.

Few-step (distilled) checkpoints need their own schedule, e.g. 4 flow-match Euler steps at the
published timesteps [1000, 750, 500, 250] with shift 5 and guidance 1. A request (or its pair's
defaults) may name:

- `scheduler`: `unipc` (diffusers' UniPCMultistepScheduler, Wan's own) or `euler`
  (FlowMatchEulerDiscreteScheduler); unset: the scheduler of the pair's folder, as before.
- `timesteps` (ints in 1..1000) or `sigmas` (floats in (0, 1]), strictly decreasing, one per step:
  the schedule before the shift. `timesteps` is the step list distilled models publish and means
  `sigmas = t / num_train_timesteps`; both go to diffusers' `set_timesteps(sigmas=...)`, which shifts
  them (sigma' = shift * sigma / (1 + (shift - 1) * sigma)) and runs at t' = sigma' * 1000.
  (Not diffusers' own `timesteps=` argument, which keeps the timesteps unshifted while shifting
  the sigmas.)
- `shift`: the flow shift (UniPC's `flow_shift`, Euler's `shift`); unset: the folder's.

A request that names none of them builds its scheduler exactly as srserve always has: the folder's
scheduler, `set_timesteps(num_inference_steps)`.

The pair's operator bounds (`ScheduleBounds`, ModelPairConfig.schedule) limit what requests may set.
This module imports no torch until a scheduler is built, so a request validates without it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch

SchedulerName = Literal["unipc", "euler"]
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)
# The diffusers class each name builds.
SCHEDULER_CLASSES: dict[str, str] = {
    "unipc": "UniPCMultistepScheduler",
    "euler": "FlowMatchEulerDiscreteScheduler",
}
MAX_TIMESTEP = 1000  # Wan's (and CogVideoX's) num_train_timesteps
MAX_SHIFT = 100.0
# The request fields that choose a schedule (all None: the pair's folder schedule).
SCHEDULE_FIELDS = ("scheduler", "timesteps", "sigmas", "shift")

Timestep = Annotated[int, Field(ge=1, le=MAX_TIMESTEP)]
Sigma = Annotated[float, Field(gt=0.0, le=1.0)]
Shift = Annotated[float, Field(gt=0.0, le=MAX_SHIFT)]


def check_decreasing(name: str, values: list[Any] | None) -> list[Any] | None:
    """ValueError naming the first pair that is not strictly decreasing (a schedule runs from noise down)."""
    if values is None:
        return values
    if not values:
        raise ValueError(f"{name} needs at least one value")
    for i in range(1, len(values)):
        if not values[i] < values[i - 1]:
            raise ValueError(
                f"must be strictly decreasing (from noise to clean); {name}[{i}] = {values[i]} follows {values[i - 1]}"
            )
    return values


def explicit_sigmas(timesteps: list[int] | None, sigmas: list[float] | None, num_train: int) -> list[float] | None:
    """The unshifted sigmas of an explicit schedule (`timesteps` as t / num_train), or None."""
    if sigmas is not None:
        return list(sigmas)
    if timesteps is not None:
        return [t / num_train for t in timesteps]
    return None


class ScheduleBounds(BaseModel):
    """What a pair's operator lets requests choose of the schedule (ModelPairConfig.schedule).

    The defaults allow everything the family runs, so a pair without bounds behaves as before.
    The pair's own defaults must lie within its bounds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedulers: list[SchedulerName] | None = Field(
        None, description="schedulers a request may name; None: any the family runs"
    )
    min_steps: Annotated[int, Field(ge=1, le=200)] = 1
    max_steps: Annotated[int, Field(ge=1, le=200)] = 200
    explicit_schedule: bool = Field(True, description="whether requests may set `timesteps` or `sigmas`")
    min_shift: Shift | None = None
    max_shift: Shift | None = None
    max_guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] | None = Field(
        None, description="e.g. 1 for a CFG-distilled checkpoint, where CFG only doubles the cost"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleBounds:
        if self.min_steps > self.max_steps:
            raise ValueError(f"schedule: min_steps ({self.min_steps}) > max_steps ({self.max_steps})")
        if self.min_shift is not None and self.max_shift is not None and self.min_shift > self.max_shift:
            raise ValueError(f"schedule: min_shift ({self.min_shift}) > max_shift ({self.max_shift})")
        return self

    def problems(self, request: Any, family: str, family_schedulers: Collection[str]) -> list[str]:
        """One line per field of `request` (a ResolvedRequest, or the pair's defaults) outside these bounds,
        or a schedule field the family cannot run, each naming the field."""
        out: list[str] = []
        fields_set = [name for name in SCHEDULE_FIELDS if getattr(request, name, None) is not None]
        if fields_set and not family_schedulers:
            out.append(
                f"{fields_set[0]}: the {family} family runs only its folder's schedule (its schedulers are "
                "discrete-time DDIM/DPM, not flow matching; few-step schedules apply to the Wan families)"
            )
            return out
        scheduler = request.scheduler
        if scheduler is not None and scheduler not in family_schedulers:
            out.append(f"scheduler: the {family} family runs {', '.join(sorted(family_schedulers))}, not {scheduler!r}")
        if scheduler is not None and self.schedulers is not None and scheduler not in self.schedulers:
            allowed = ", ".join(self.schedulers)
            out.append(f"scheduler: {scheduler!r} is not allowed for this model (allowed: {allowed})")
        steps = request.num_inference_steps
        if steps is not None and not self.min_steps <= steps <= self.max_steps:
            out.append(
                f"num_inference_steps: {steps} is outside this model's bounds ({self.min_steps}..{self.max_steps})"
            )
        if not self.explicit_schedule:
            for name in ("timesteps", "sigmas"):
                if getattr(request, name) is not None:
                    out.append(f"{name}: this model takes no explicit schedule (its bounds set explicit_schedule off)")
        shift = request.shift
        if shift is not None and (
            (self.min_shift is not None and shift < self.min_shift)
            or (self.max_shift is not None and shift > self.max_shift)
        ):
            out.append(f"shift: {shift} is outside this model's bounds ({self.min_shift}..{self.max_shift})")
        scale = request.guidance_scale
        if scale is not None and self.max_guidance_scale is not None and scale > self.max_guidance_scale:
            out.append(f"guidance_scale: {scale} is above this model's maximum {self.max_guidance_scale}")
        return out


@dataclass(frozen=True)
class ScheduleLimits:
    """What a request to one pair may set of the schedule, as `ScheduleBounds.problems` decides it for the
    pair's family, plus the pair's defaults a request inherits: what a published request schema states.

    A request that sets no list runs the defaults' list at the default step count, and every request runs
    the defaults' scheduler and shift unless it sets its own; that decides which step caches it may ask for
    (`srserve.engine.request.cache_refusal`).
    """

    bounds: ScheduleBounds
    schedulers: tuple[str, ...]  # the names a request may give: the family's within the bounds
    flow: bool  # the family runs flow-matching schedules; else a request sets none of SCHEDULE_FIELDS
    default_steps: int
    default_list: bool  # the defaults carry `timesteps` or `sigmas`
    default_schedule: bool  # the defaults carry `scheduler` or `shift`

    @classmethod
    def of(cls, bounds: ScheduleBounds, family_schedulers: Collection[str], defaults: Any) -> ScheduleLimits:
        """The limits of a pair: its bounds, its family's schedulers, its defaults (a RequestDefaults)."""
        allowed = [n for n in SCHEDULER_NAMES if n in family_schedulers]
        if bounds.schedulers is not None:
            allowed = [n for n in allowed if n in bounds.schedulers]
        return cls(
            bounds=bounds,
            schedulers=tuple(allowed),
            flow=bool(family_schedulers),
            default_steps=defaults.num_inference_steps,
            default_list=defaults.timesteps is not None or defaults.sigmas is not None,
            default_schedule=defaults.scheduler is not None or defaults.shift is not None,
        )


def has_explicit_schedule(request: Any) -> bool:
    """Whether the request sets any schedule field (else it runs the folder's schedule, as always)."""
    return any(getattr(request, name, None) is not None for name in SCHEDULE_FIELDS)


def build_scheduler(template: Any, request: Any, device: torch.device | str | None) -> Any:
    """A fresh scheduler for `request` (a ResolvedRequest) with set_timesteps done.

    `template`: the pair's folder scheduler. Without schedule fields this is exactly srserve's old path
    (from_config, set_timesteps(N)). With them: the named class from the template's config (Euler
    from a UniPC folder takes its num_train_timesteps and flow_shift as `shift`), the request's
    shift, and the explicit sigmas passed to set_timesteps.
    """
    num_steps = request.num_inference_steps
    if not has_explicit_schedule(request):
        sched = type(template).from_config(template.config)
        sched.set_timesteps(num_steps, device=device)
        return sched
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    config = dict(template.config)
    name = request.scheduler
    current = type(template).__name__
    if name is None:
        name = next((k for k, v in SCHEDULER_CLASSES.items() if v == current), None)
        if name is None:
            raise ValueError(f"schedule: the pair's scheduler {current} takes no few-step schedule")
    num_train = int(config.get("num_train_timesteps", MAX_TIMESTEP))
    if name == "unipc":
        if current == SCHEDULER_CLASSES["unipc"]:
            sched = UniPCMultistepScheduler.from_config(config)
        else:  # a flow-match folder's config: UniPC in its flow mode
            sched = UniPCMultistepScheduler(
                num_train_timesteps=num_train,
                prediction_type="flow_prediction",
                use_flow_sigmas=True,
                flow_shift=float(config.get("shift", 1.0)),
            )
        if request.shift is not None:
            sched = UniPCMultistepScheduler.from_config(sched.config, flow_shift=request.shift)
        if not sched.config.use_flow_sigmas:
            raise ValueError("scheduler: the pair's UniPC scheduler is not a flow-matching one (use_flow_sigmas off)")
    else:
        if current == SCHEDULER_CLASSES["euler"]:
            sched = FlowMatchEulerDiscreteScheduler.from_config(config)
        else:  # Wan's UniPC folder: its training timesteps and flow shift
            sched = FlowMatchEulerDiscreteScheduler(
                num_train_timesteps=num_train, shift=float(config.get("flow_shift", 1.0))
            )
        if request.shift is not None:
            sched = FlowMatchEulerDiscreteScheduler.from_config(sched.config, shift=request.shift)
    sigmas = explicit_sigmas(request.timesteps, request.sigmas, num_train)
    if sigmas is None:
        sched.set_timesteps(num_steps, device=device)
    else:
        # An array, not a list: UniPC's flow branch does arithmetic on what it is given.
        sched.set_timesteps(num_steps, device=device, sigmas=np.asarray(sigmas, dtype=np.float64))
    return sched
