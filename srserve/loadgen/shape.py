"""Replicas per pool and GPU count of a deployment, from its ServingConfig (for utilisation and per-GPU figures)."""

from __future__ import annotations

from srserve.serving.config import PoolConfig, ServingConfig
from srserve.workload.records import COLOCATED, RENDER, SKETCH


def _replicas(pool: PoolConfig) -> int:
    """Replicas a pool may run (autoscaled, queue-autoscaled included: its maximum)."""
    return pool.replica_ceiling()


def replicas_per_pool(config: ServingConfig) -> dict[str, int]:
    if config.layout == "colocated":
        return {COLOCATED: _replicas(config.colocated_pool)}
    return {SKETCH: _replicas(config.sketch_pool), RENDER: _replicas(config.render_pool)}


def device_count(config: ServingConfig) -> float:
    """GPUs the model pools hold; on CPU-only pools (num_gpus 0) each replica counts as one device."""
    pools = [config.colocated_pool] if config.layout == "colocated" else [config.sketch_pool, config.render_pool]
    if config.layout != "colocated" and config.text_encoder_placement == "pool":
        pools.append(config.text_pool)
    total = 0.0
    for pool in pools:
        gpus = float(pool.ray_actor_options.get("num_gpus", 0) or 0)
        total += _replicas(pool) * (gpus if gpus > 0 else 1.0)
    return total
