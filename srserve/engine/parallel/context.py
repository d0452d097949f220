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
from typing import TYPE_CHECKING

import torch
from diffusers.models._modeling_parallel import ContextParallelConfig
from diffusers.models._modeling_parallel import ParallelConfig as DiffusersParallelConfig

if TYPE_CHECKING:
    from srserve.engine.parallel.group import ParallelRuntime


def enable_context_parallel(model: torch.nn.Module, runtime: ParallelRuntime) -> None:
    spec = runtime.spec
    config = ContextParallelConfig(ulysses_degree=spec.ulysses, ring_degree=spec.ring, mesh=runtime.mesh)
    shadowed = runtime.device.type == "cpu"
    if shadowed:

        def resolve_on_cpu(cp: ContextParallelConfig) -> DiffusersParallelConfig:
            resolved = DiffusersParallelConfig(context_parallel_config=cp)
            resolved.setup(runtime.rank, runtime.world_size, runtime.device, mesh=runtime.mesh)
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
