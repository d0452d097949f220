"""Per-pool autoscaling on the pool's queue of work in expected GPU-seconds.

Data flow: every replica of a pool, when Serve polls its `record_autoscaling_stats`, asks the job
board for the pool's work (srserve.serving.control.pricing.pool_work: remaining steps x measured step time +
encode/decode costs, over the jobs waiting for or running in that pool) and reports it. Serve
averages each replica's reports over `look_back_period_s` and calls this policy in the controller
every control-loop tick (Ray 2.60: `autoscaling_config.policy.policy_function` names a class;
Serve instantiates it once with `policy_kwargs` and calls `instance(ctx: AutoscalingContext)`,
which returns `(target_replicas, policy_state)`). Serve then applies min/max, the scaling factors
and `upscale_delay_s` / `downscale_delay_s` to the returned target.

The target is ceil(work / target_work_s): each replica should hold about `target_work_s` GPU-seconds
of queued work, i.e. roughly the queueing delay you accept. Cool-downs space scaling actions:
no scale-up within `upscale_cooldown_s` of the last one, no scale-down within
`downscale_cooldown_s` of any. Each decision is logged once (and again every `log_every_s` while
it stands) on the `ray.serve` logger, so it lands in the Serve controller's log.

Its settings (and their defaults, the only ones) are srserve.serving.config.autoscaling's
QueueWorkAutoscaling, which hands the policy every one of them through `policy_kwargs`.
This module runs inside the Serve controller: it imports nothing heavy (no torch, no srserve engine,
not even the config package, which imports the engine's model config).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("ray.serve")

# Metric names replicas report (PoolWork.as_metrics()).
WORK_S = "srserve_pool_work_s"
UNPRICED_STEPS = "srserve_pool_unpriced_steps"
INCOMING_S = "srserve_pool_incoming_s"
JOBS = "srserve_pool_jobs"
STEP_S = "srserve_pool_step_s"
_STATE_PREFIX = "srserve_"


@dataclass(frozen=True)
class PoolLoad:
    """The pool's queue of work as the replicas reported it (max over replicas: each reports the
    whole pool's figure from the board, so the freshest/highest is the pool's)."""

    work_s: float
    unpriced_steps: float
    incoming_s: float
    jobs: float
    step_s: float
    replicas_reporting: int


def read_pool_load(aggregated_metrics: dict[str, dict[Any, float]] | None) -> PoolLoad | None:
    """The pool's load from Serve's aggregated custom metrics; None when no replica reported yet."""
    metrics = aggregated_metrics or {}
    if not metrics.get(WORK_S):
        return None

    def top(name: str) -> float:
        values = [v for v in (metrics.get(name) or {}).values() if v is not None and math.isfinite(v)]
        return max(values) if values else 0.0

    return PoolLoad(top(WORK_S), top(UNPRICED_STEPS), top(INCOMING_S), top(JOBS), top(STEP_S), len(metrics[WORK_S]))


@dataclass(frozen=True)
class Decision:
    replicas: int
    action: str  # scale_up, scale_down, hold
    reason: str
    work_s: float | None


def decide(
    load: PoolLoad | None,
    current: int,
    min_replicas: int,
    max_replicas: int,
    now: float,
    last_scale_up: float | None,
    last_scale_down: float | None,
    *,
    target_work_s: float,
    default_step_s: float,
    lookahead: float,
    upscale_cooldown_s: float,
    downscale_cooldown_s: float,
) -> Decision:
    """The pool's target replica count for its queued GPU-seconds, within bounds and cool-downs."""
    if load is None:
        held = min(max(current, min_replicas), max_replicas)
        return Decision(held, _action(held, current), "no work reports from the pool's replicas yet", None)
    work = load.work_s + load.unpriced_steps * default_step_s + lookahead * load.incoming_s
    wanted = math.ceil(work / target_work_s - 1e-9) if work > 0 else 0
    target = min(max(wanted, min_replicas), max_replicas)
    reason = (
        f"work {work:.1f} GPU-s over {load.jobs:.0f} jobs (step {load.step_s:.3g}s) / "
        f"{target_work_s:g} GPU-s per replica -> {wanted}, bounds [{min_replicas}, {max_replicas}]"
    )
    last_any = max(t for t in (last_scale_up, last_scale_down, 0.0) if t is not None)
    if target > current and last_scale_up is not None and now - last_scale_up < upscale_cooldown_s:
        wait = upscale_cooldown_s - (now - last_scale_up)
        return Decision(current, "hold", f"{reason}; scale-up cooling down ({wait:.0f}s left)", work)
    if target < current and last_any and now - last_any < downscale_cooldown_s:
        wait = downscale_cooldown_s - (now - last_any)
        return Decision(current, "hold", f"{reason}; scale-down cooling down ({wait:.0f}s left)", work)
    return Decision(target, _action(target, current), reason, work)


def _action(target: int, current: int) -> str:
    return "scale_up" if target > current else "scale_down" if target < current else "hold"


class QueueWorkPolicy:
    """Serve autoscaling policy (class form): one instance per deployment, called every tick."""

    def __init__(
        self,
        *,
        target_work_s: float,
        default_step_s: float,
        lookahead: float,
        upscale_cooldown_s: float,
        downscale_cooldown_s: float,
        log_every_s: float,
    ) -> None:
        """Every setting is required: QueueWorkAutoscaling.policy_kwargs() holds the defaults."""
        self.settings = {
            "target_work_s": float(target_work_s),
            "default_step_s": float(default_step_s),
            "lookahead": float(lookahead),
            "upscale_cooldown_s": float(upscale_cooldown_s),
            "downscale_cooldown_s": float(downscale_cooldown_s),
        }
        self.log_every_s = float(log_every_s)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        now = ctx.current_time or time.time()
        state = dict(ctx.policy_state or {})
        current = ctx.target_num_replicas
        decision = decide(
            read_pool_load(ctx.aggregated_metrics),
            current,
            ctx.capacity_adjusted_min_replicas,
            ctx.capacity_adjusted_max_replicas,
            now,
            ctx.last_scale_up_time,
            ctx.last_scale_down_time,
            **self.settings,
        )
        reported = "reports" if decision.work_s is not None else "no-reports"
        key = f"{decision.action}:{decision.replicas}:{current}:{reported}"
        last_key = state.get(_STATE_PREFIX + "logged")
        last_at = state.get(_STATE_PREFIX + "logged_at") or 0.0
        changed = key != last_key
        if changed or (decision.action != "hold" and now - last_at >= self.log_every_s):
            logger.info(
                "srserve autoscale app=%s deployment=%s decision=%s from=%d to=%d work_s=%s reason=%r",
                ctx.app_name,
                ctx.deployment_name,
                decision.action,
                current,
                decision.replicas,
                "-" if decision.work_s is None else f"{decision.work_s:.2f}",
                decision.reason,
            )
            state[_STATE_PREFIX + "logged"] = key
            state[_STATE_PREFIX + "logged_at"] = now
        state[_STATE_PREFIX + "work_s"] = decision.work_s
        return decision.replicas, state
