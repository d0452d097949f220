"""One replica's torch.distributed group: set up per rank, then every rank runs the same job (SPMD).

The mesh is (cfg, ring, ulysses): the CFG pair of a rank is its `cfg` slice, its sequence-parallel
group the (ring, ulysses) slice. nccl on CUDA, gloo on CPU; every collective has the spec's timeout,
so a rank that died or hangs turns into an error on the others instead of a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from srserve.engine.parallel.cfg import BRANCHES, CfgSplit
from srserve.engine.parallel.config import ParallelSpec
from srserve.engine.parallel.context import enable_context_parallel

MESH_DIMS = ("cfg", "ring", "ulysses")


@dataclass
class ParallelRuntime:
    """This process's rank in its replica's group; what the engine needs to run a job SPMD."""

    spec: ParallelSpec
    rank: int
    device: torch.device
    mesh: DeviceMesh
    cfg_split: CfgSplit | None

    @property
    def world_size(self) -> int:
        return self.spec.world_size

    @property
    def leader(self) -> bool:
        """Rank 0 reports progress, decides cancellation and returns the result."""
        return self.rank == 0

    def cache_tag(self) -> str:
        """Suffix of a transformer's component-cache kind: a parallelised module is never a plain one."""
        return f"parallel[{self.spec.label()}]"

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """Context parallel (Ulysses / ring) on a transformer whose attention backend is already set."""
        if self.spec.context_degree > 1:
            enable_context_parallel(model, self.spec, self.rank, self.device, self.mesh)
        return model

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (a broadcast): decisions that must not diverge between ranks."""
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def agreed(self, local: Callable[[], bool] | None) -> Callable[[], bool]:
        """A cancel check every rank calls at the same step boundary; rank 0 asks `local`, all get its answer."""

        def check() -> bool:
            return self.agree(bool(self.leader and local is not None and local()))

        return check

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def process_group_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_runtime(spec: ParallelSpec, rank: int, address: str, port: int, device: torch.device | str) -> ParallelRuntime:
    """Join the replica's group (blocks until all `spec.world_size` ranks have joined) and build its mesh."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:  # bare "cuda": the current device (the actor's only GPU)
        torch.cuda.set_device(device)
    dist.init_process_group(
        process_group_backend(device),
        init_method=f"tcp://{address}:{port}",
        rank=rank,
        world_size=spec.world_size,
        timeout=timedelta(seconds=spec.timeout_s),
    )
    mesh = init_device_mesh(device.type, (spec.cfg, spec.ring, spec.ulysses), mesh_dim_names=MESH_DIMS)
    split = None
    if spec.cfg > 1:
        split = CfgSplit(BRANCHES[mesh["cfg"].get_local_rank()], mesh["cfg"].get_group())
    return ParallelRuntime(spec, rank, device, mesh, split)
