"""A pool's autoscaling on its queued GPU-seconds: the settings, and the Serve `autoscaling_config` they become.

The defaults below are the only ones: Serve builds the policy (srserve.serving.ops.autoscaling,
running in the Serve controller) from `policy_kwargs()`, every setting spelled out, and the policy
has no defaults of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Named as a string: the policy runs in the Serve controller, which imports it from this path.
POLICY_IMPORT_PATH = "srserve.serving.ops.autoscaling:QueueWorkPolicy"


class QueueWorkAutoscaling(BaseModel):
    """A pool's autoscaling on queued GPU-seconds (PoolConfig.queue_autoscaling)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="0 lets the pool scale to zero (cold starts load the model)")
    max_replicas: int = Field(4, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_work_s: float = Field(120.0, gt=0, description="GPU-seconds of queued work one replica should hold")
    default_step_s: float = Field(1.0, gt=0, description="price of a step before any step time is measured")
    lookahead: float = Field(0.0, ge=0, le=1, description="weight of work still upstream (render: jobs sketching)")
    upscale_cooldown_s: float = Field(0.0, ge=0, description="no scale-up this soon after the last scale-up")
    downscale_cooldown_s: float = Field(120.0, ge=0, description="no scale-down this soon after any scaling")
    upscale_delay_s: float = Field(10.0, ge=0, description="Serve: a scale-up must be wanted this long")
    downscale_delay_s: float = Field(60.0, ge=0, description="Serve: a scale-down must be wanted this long")
    look_back_period_s: float = Field(15.0, gt=0, description="Serve: window the reports are averaged over")
    metrics_interval_s: float | None = Field(
        None, gt=0, description="how often replicas report (Serve's default 10 s when unset)"
    )
    drain_timeout_s: float = Field(
        900.0, gt=0, description="a replica being removed finishes its running job for up to this long"
    )
    log_every_s: float = Field(30.0, gt=0, description="repeat a standing decision in the log this often")

    @model_validator(mode="after")
    def _bounds(self) -> QueueWorkAutoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie within [min_replicas, max_replicas]")
        if self.metrics_interval_s is not None and self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError("look_back_period_s must be greater than metrics_interval_s")
        return self

    def policy_kwargs(self) -> dict[str, float]:
        """Every setting the policy takes (it has no defaults of its own)."""
        return {
            "target_work_s": self.target_work_s,
            "default_step_s": self.default_step_s,
            "lookahead": self.lookahead,
            "upscale_cooldown_s": self.upscale_cooldown_s,
            "downscale_cooldown_s": self.downscale_cooldown_s,
            "log_every_s": self.log_every_s,
        }

    def ray_autoscaling_config(self) -> dict[str, Any]:
        """Serve's `autoscaling_config` for the deployment, with this policy plugged in."""
        config: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
            "policy": {"policy_function": POLICY_IMPORT_PATH, "policy_kwargs": self.policy_kwargs()},
        }
        if self.initial_replicas is not None:
            config["initial_replicas"] = self.initial_replicas
        if self.metrics_interval_s is not None:
            config["metrics_interval_s"] = self.metrics_interval_s
        return config
