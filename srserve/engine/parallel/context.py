"""Ulysses / ring on a transformer through diffusers' own context parallelism.

`transformer.enable_parallelism(config=ContextParallelConfig(..., mesh=...))` installs diffusers'
split/gather hooks from the model's `_cp_plan` and hands the mesh to its attention processors.
The mesh is the replica's (cfg, ring, ulysses) mesh, so each CFG branch's ranks form their own
sequence-parallel group.

CPU. diffusers 0.42.1 resolves the rank's device as `rank % torch.accelerator.device_count()`
(`ModelMixin._resolve_parallel_config`), which divides by zero on a host without an accelerator.
On a CPU device srserve shadows that one method on this model instance only, for the duration of
the call, with the same steps on the engine's device (no global patch, nothing else changes); on
CUDA diffusers' own method runs.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models._modeling_parallel import ContextParallelConfig
from diffusers.models._modeling_parallel import ParallelConfig as DiffusersParallelConfig
from torch.distributed.device_mesh import DeviceMesh

from srserve.engine.parallel.config import ParallelSpec


def enable_context_parallel(
    model: torch.nn.Module, spec: ParallelSpec, rank: int, device: torch.device, mesh: DeviceMesh
) -> None:
    """Split `model`'s token sequence over the mesh's ring and Ulysses dimensions (this rank's place in it)."""
    config = ContextParallelConfig(ulysses_degree=spec.ulysses, ring_degree=spec.ring, mesh=mesh)
    shadowed = device.type == "cpu"
    if shadowed:

        def resolve_on_cpu(cp: ContextParallelConfig) -> DiffusersParallelConfig:
            resolved = DiffusersParallelConfig(context_parallel_config=cp)
            resolved.setup(rank, spec.world_size, device, mesh=mesh)
            model._parallel_config = resolved
            return resolved

        model._resolve_parallel_config = resolve_on_cpu
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)  # the "experimental feature" warning, once per load
    try:
        model.enable_parallelism(config=config)
    finally:
        diffusers_logger.setLevel(level)
        if shadowed:
            del model._resolve_parallel_config
