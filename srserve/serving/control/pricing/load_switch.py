"""The `load` switch policy: each job's cap on its sketch steps, chosen at admission from the load.

SRDiffusion's adaptive rule picks the switch step from the large model's own predictions, within
[min_step, max_step]. Under load the two pools are not equally busy: while the sketch pool is the
bottleneck every large-model step a job skips is a step the idle render pool can take over, and
when the queue would make a job miss its SLO a shorter sketch is the only lever left. A `load`
job therefore runs the adaptive rule under a cap chosen here, never below a quality floor:

- `unmeasured`: no step times measured yet; the adaptive bounds stay.
- `adaptive`: the sketch pool is not the bottleneck and the predicted latency meets the SLO.
- `balance`: the sketch pool is the bottleneck; the cap is the step k* that loads both pools
  equally per job, k* = N * t_s * R_s / (t_l * R_r + t_s * R_s) (t: step times, R: replicas).
- `slo`: the largest cap (at most the one above) whose predicted latency meets the SLO.
- `floor`: no cap in [floor, max] meets the SLO; the cap that gets closest (ties: more steps).

The predicted latency of a job that sketches k steps, with W the pools' queued work per replica:
L(k) = max(W_s + encode + k * t_l, W_r) + (N - k) * t_s + decode. Pure and deterministic: the
same snapshot gives the same choice, which is stored with the job (switch_cap, switch_reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from srserve.engine.request import SwitchPolicy
from srserve.serving.control.jobs import Job
from srserve.serving.control.pricing.pool_work import estimate_pool_work, measure_stage_times
from srserve.serving.control.store.work_snapshot import WorkSnapshot

REASONS = ("unmeasured", "adaptive", "balance", "slo", "floor")


class LoadSwitchConfig(BaseModel):
    """Operator settings of the `load` switch (ingress.load_switch)."""

    model_config = ConfigDict(extra="forbid")

    floor_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="quality floor: a load cap never goes below this share of the steps"
    )
    slo_s: float | None = Field(
        None, gt=0, description="latency target per job (seconds); unset: the job's deadline, else none"
    )
    bottleneck_ratio: float = Field(
        1.0, gt=0, description="the sketch pool is the bottleneck when its queue per replica exceeds this x render's"
    )


@dataclass(frozen=True)
class LoadSnapshot:
    """The pools' queued work (seconds of one replica's compute) and the measured stage times."""

    sketch_work_s: float
    render_work_s: float
    sketch_replicas: int
    render_replicas: int
    sketch_step_s: float | None
    render_step_s: float | None
    encode_s: float = 0.0
    decode_s: float = 0.0

    @property
    def sketch_wait_s(self) -> float:
        return self.sketch_work_s / max(self.sketch_replicas, 1)

    @property
    def render_wait_s(self) -> float:
        return self.render_work_s / max(self.render_replicas, 1)

    def latency_s(self, num_steps: int, k: int) -> float:
        """L(k) of the module docstring (needs both step times)."""
        assert self.sketch_step_s is not None and self.render_step_s is not None
        at_render = self.sketch_wait_s + self.encode_s + k * self.sketch_step_s
        return max(at_render, self.render_wait_s) + (num_steps - k) * self.render_step_s + self.decode_s


@dataclass(frozen=True)
class SwitchChoice:
    policy: SwitchPolicy  # the adaptive policy the engine runs
    cap: int
    reason: str
    predicted_s: float | None = None


def quality_floor(policy: SwitchPolicy, num_steps: int, config: LoadSwitchConfig) -> int:
    """Fewest sketch steps a load cap may leave: the operator's floor, or the request's own bound."""
    lo, hi = policy.bounds(num_steps)
    return min(max(lo, math.ceil(config.floor_fraction * num_steps)), hi)


def choose_switch(
    policy: SwitchPolicy, num_steps: int, load: LoadSnapshot, config: LoadSwitchConfig, slo_s: float | None
) -> SwitchChoice:
    """The cap for one `load` job (see the module docstring)."""
    lo, hi = policy.bounds(num_steps)
    floor = quality_floor(policy, num_steps, config)

    def capped(cap: int, reason: str, predicted: float | None) -> SwitchChoice:
        adaptive = SwitchPolicy(kind="adaptive", tau=policy.tau, min_step=min(lo, cap), max_step=cap)
        return SwitchChoice(adaptive, cap, reason, predicted)

    if load.sketch_step_s is None or load.render_step_s is None:
        return capped(hi, "unmeasured", None)
    t_l, t_s = load.sketch_step_s, load.render_step_s
    sketch_bound = load.sketch_wait_s > 0 and load.sketch_wait_s > config.bottleneck_ratio * load.render_wait_s
    cap, reason = hi, "adaptive"
    if sketch_bound:
        r_s, r_r = max(load.sketch_replicas, 1), max(load.render_replicas, 1)
        balanced = round(num_steps * t_s * r_s / (t_l * r_r + t_s * r_s))
        if balanced < hi:
            cap, reason = max(balanced, floor), "balance"
    if slo_s is None or load.latency_s(num_steps, cap) <= slo_s:
        return capped(cap, reason, load.latency_s(num_steps, cap))
    for k in range(cap, floor - 1, -1):
        if load.latency_s(num_steps, k) <= slo_s:
            return capped(k, "slo", load.latency_s(num_steps, k))
    best = min(range(cap, floor - 1, -1), key=lambda k: load.latency_s(num_steps, k))  # first minimum: most steps
    return capped(best, "floor", load.latency_s(num_steps, best))


def load_snapshot(
    jobs: list[Job] | WorkSnapshot,
    now: float,
    sketch_replicas: int,
    render_replicas: int,
    *,
    pools: tuple[str, str] = ("sketch", "render"),
    text_pool: bool = False,
) -> LoadSnapshot:
    """The load of the store's jobs (live ones plus recent finished ones, which price a step), from a list
    of them or the store's WorkSnapshot.

    `pools` are the pools running the sketch and the render phase. When one pool runs both (colocated
    replicas), all its work counts as the sketch side's and the render side has no queue of its own:
    the cap then moves only for the SLO."""
    jobs = WorkSnapshot.of(jobs)
    times = measure_stage_times(jobs, now)
    sketch_pool, render_pool = pools
    sketch = estimate_pool_work(jobs, sketch_pool, now, include_encode=not text_pool, times=times)
    render_work = 0.0
    if render_pool != sketch_pool:
        render = estimate_pool_work(jobs, render_pool, now, times=times)
        render_work = render.work_s + render.incoming_s
    return LoadSnapshot(
        sketch_work_s=sketch.work_s,
        render_work_s=render_work,
        sketch_replicas=sketch_replicas,
        render_replicas=render_replicas,
        sketch_step_s=times.sketch_step_s,
        render_step_s=times.render_step_s,
        encode_s=times.encode_s or 0.0,
        decode_s=times.decode_s or 0.0,
    )
