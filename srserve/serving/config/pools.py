"""One replica pool's config (sketch, render, text encoder or colocated): scale, placement, per-pool knobs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from srserve.engine.config import ModelPairConfig
from srserve.engine.denoising.cache import CachePolicy
from srserve.engine.models.attention import AttentionBackend
from srserve.engine.parallel import ParallelSpec
from srserve.serving.config.autoscaling import QueueWorkAutoscaling
from srserve.serving.config.telemetry import GpuTelemetryConfig
from srserve.serving.control.request_cache import CacheLimits

# Serve's own default for a raw autoscaling_config's min_replicas and max_replicas.
SERVE_DEFAULT_REPLICAS = 1


class ReplicaSettings(BaseModel):
    """A pool's Serve `user_config`: settings its replicas apply live (ReplicaOperations.reconfigure)."""

    model_config = ConfigDict(extra="forbid")

    telemetry: GpuTelemetryConfig = GpuTelemetryConfig()


def rank_bundles(actor_options: dict[str, Any], world_size: int) -> list[dict[str, float]]:
    """One placement-group bundle per rank, each what one rank's actor options ask for (Ray's resource names)."""
    bundle: dict[str, float] = {"CPU": float(actor_options.get("num_cpus", 1))}
    if actor_options.get("num_gpus"):
        bundle["GPU"] = float(actor_options["num_gpus"])
    if actor_options.get("accelerator_type"):  # how Ray expresses accelerator_type as a resource demand
        bundle[f"accelerator_type:{actor_options['accelerator_type']}"] = 0.001
    if actor_options.get("memory"):
        bundle["memory"] = float(actor_options["memory"])
    bundle.update({k: float(v) for k, v in (actor_options.get("resources") or {}).items()})
    return [dict(bundle) for _ in range(world_size)]


class PoolConfig(BaseModel):
    """One replica pool (sketch, render or text encoder): its scale and its placement."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(1, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    # Ray actor options: num_gpus / accelerator_type / resources pick the GPU kind for the pool.
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})
    # >1 lets the next job wait inside the replica (one runs at a time behind a lock), so the GPU never
    # waits between jobs; the store's queue hands each replica at most min(this, 2) jobs at once.
    max_ongoing_requests: int = Field(4, ge=1)
    max_queued_requests: int = Field(64, ge=-1)
    # Admission control: jobs waiting for or running in this pool, beyond which new jobs are refused.
    max_backlog: int = Field(32, ge=1)
    # On scale-down or redeploy a replica finishes its ongoing (and locally queued) requests for up
    # to this long; whatever is still running then is re-run elsewhere by the ingress's recovery.
    graceful_shutdown_timeout_s: float = Field(300.0, ge=0)
    # Autoscaling on the pool's queued GPU-seconds (srserve.serving.ops.autoscaling); or Serve's raw
    # autoscaling_config above (e.g. its default request-count policy). At most one of the two.
    queue_autoscaling: QueueWorkAutoscaling | None = None
    attention_backend: AttentionBackend | None = Field(None, description="overrides model.attention_backend here")
    compile: bool | None = Field(
        None, description="overrides model.compile here: regional compile of the transformers' repeated blocks"
    )
    parallel: ParallelSpec = Field(
        ParallelSpec(),
        description="devices per replica (ulysses x ring x cfg; sketch and render pools): each replica reserves "
        "that many bundles of ray_actor_options, STRICT_PACK on one node; docs/parallel.md",
    )
    telemetry: GpuTelemetryConfig = GpuTelemetryConfig()
    cache: CachePolicy = Field(
        CachePolicy(), description="the step cache of this pool's stage (colocated: of both); docs/caching.md"
    )
    cache_limits: CacheLimits = Field(CacheLimits(), description="what a request may choose instead of `cache`")
    adapter_cache_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description="LoRA adapters each replica keeps loaded (LRU; Serve's multiplexing routes by them); "
        "overrides model.adapter_cache_size here",
    )

    @model_validator(mode="after")
    def _scale_one_way(self) -> PoolConfig:
        if self.autoscaling_config is not None and self.queue_autoscaling is not None:
            raise ValueError("set autoscaling_config or queue_autoscaling, not both")
        if self.autoscaling_config is not None or self.queue_autoscaling is not None:
            self.num_replicas = None
        return self

    def replica_floor(self) -> int:
        """Replicas the pool has at least (autoscaled pools: their minimum), for load estimates."""
        if self.num_replicas is not None:
            return self.num_replicas
        if self.queue_autoscaling is not None:
            return max(self.queue_autoscaling.min_replicas, 1)
        return max(int((self.autoscaling_config or {}).get("min_replicas", SERVE_DEFAULT_REPLICAS)), 1)

    def replica_ceiling(self) -> int:
        """Replicas the pool may grow to (autoscaled pools: their maximum), for utilisation and per-GPU figures."""
        if self.num_replicas is not None:
            return self.num_replicas
        if self.queue_autoscaling is not None:
            return self.queue_autoscaling.max_replicas
        return int((self.autoscaling_config or {}).get("max_replicas", SERVE_DEFAULT_REPLICAS))

    def model_for(self, pair: ModelPairConfig) -> ModelPairConfig:
        """The model pair as this pool loads it (its attention backend, compile and adapter cache overrides
        applied)."""
        updates: dict[str, Any] = {}
        if self.adapter_cache_size is not None:
            updates["adapter_cache_size"] = self.adapter_cache_size
        if self.attention_backend is not None:
            updates["attention_backend"] = self.attention_backend
        if self.compile is not None:
            updates["compile"] = self.compile
        return pair.model_copy(update=updates) if updates else pair

    def deployment_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "ray_actor_options": dict(self.ray_actor_options),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.queue_autoscaling is not None:
            opts["autoscaling_config"] = self.queue_autoscaling.ray_autoscaling_config()
            opts["graceful_shutdown_timeout_s"] = self.queue_autoscaling.drain_timeout_s
        elif self.autoscaling_config is not None:
            opts["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            opts["num_replicas"] = self.num_replicas
        if self.parallel.enabled:  # rank 0 is the replica (bundle 0), ranks 1.. its actors (serving/pools/ranks.py)
            opts["placement_group_bundles"] = rank_bundles(self.ray_actor_options, self.parallel.world_size)
            opts["placement_group_strategy"] = "STRICT_PACK"
        # Applied live by the replicas' `reconfigure` (srserve.serving.ops.replica_operations).
        opts["user_config"] = ReplicaSettings(telemetry=self.telemetry).model_dump()
        return opts
