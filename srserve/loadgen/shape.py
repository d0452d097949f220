"""Replicas per pool and GPU count of a deployment, from its ServingConfig (for utilisation and per-GPU figures)."""

from __future__ import annotations

from srserve.serving.config import ServingConfig


def replicas_per_pool(config: ServingConfig) -> dict[str, int]:
    """The replicas each pool running a phase of the jobs may have (autoscaled: its maximum)."""
    layout = config.pool_layout()
    return {name: layout.pools[name].replica_ceiling() for name in dict.fromkeys(layout.phases.values())}


def device_count(config: ServingConfig) -> float:
    """GPUs the pools hold; on CPU-only pools (num_gpus 0) each replica counts as one device."""
    total = 0.0
    for pool in config.pool_layout().pools.values():
        gpus = float(pool.ray_actor_options.get("num_gpus", 0) or 0)
        total += pool.replica_ceiling() * (gpus if gpus > 0 else 1.0)
    return total
