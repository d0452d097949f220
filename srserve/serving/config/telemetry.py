"""Per-pool GPU telemetry settings (the sampler: srserve.serving.ops.gpu_telemetry)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GpuTelemetryConfig(BaseModel):
    """Per pool: whether and how often its replicas sample their GPUs."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_s: float = Field(5.0, gt=0, description="seconds between two samples")
