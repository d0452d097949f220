"""What every GPU worker replica does for operations, besides its stage: a mixin of the workers.

- `reconfigure(user_config)`: Serve calls it after `__init__` and whenever the pool's `user_config`
  changes (PoolConfig puts the pool's operational settings there), without restarting the
  replica: starts or retunes GPU telemetry and installs the job-id log filter.
- `record_autoscaling_stats()`: Serve calls it periodically when the pool autoscales; the replica
  asks the job store for its pool's queue of work in GPU-seconds (srserve.serving.control.pricing.pool_work) and
  reports it to the controller, where srserve.serving.ops.autoscaling.QueueWorkPolicy reads it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

from srserve.engine import Role, SRDiffusionEngine
from srserve.serving.config import ReplicaSettings
from srserve.serving.control.pricing.pool_work import estimate_pool_work
from srserve.serving.ops.gpu_telemetry import GpuTelemetry
from srserve.serving.ops.job_logging import install_job_log_filter

if TYPE_CHECKING:
    from srserve.serving.control.store.job_store import JobStore


class ReplicaOperations:
    # The layout's name for the replica's pool (srserve.serving.config.layout): each worker class sets it.
    pool_name: ClassVar[str]
    store: JobStore
    engine: SRDiffusionEngine
    _gpu_telemetry: GpuTelemetry | None = None

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        settings = ReplicaSettings.model_validate(user_config or {})
        install_job_log_filter()
        if self._gpu_telemetry is None:
            self._gpu_telemetry = GpuTelemetry(self.pool_name, settings.telemetry).start()
        else:
            self._gpu_telemetry.update(settings.telemetry)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        snapshot = await self.store.work_snapshot()
        now = self.store.clock()
        return estimate_pool_work(snapshot, self.pool_name, now, Role.TEXT in self.engine.roles).as_metrics()

    async def gpu_telemetry(self) -> dict[str, Any]:
        """The replica's telemetry state and last sample (diagnostics, tests)."""
        t = self._gpu_telemetry
        if t is None:
            return {"available": False, "reason": "not started", "samples": []}
        return {"available": t.available, "reason": t.reason, "samples": [asdict(s) for s in t.last]}
