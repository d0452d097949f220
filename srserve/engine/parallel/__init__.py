"""Multi-device replicas: Ulysses / ring sequence parallel (diffusers' context parallelism) and CFG
parallel across the ranks of one torch.distributed group. No Ray here: the serving layer starts the
ranks, this package makes one engine per rank run the same job SPMD. See docs/parallel.md."""

from srserve.engine.parallel.cfg import CfgSplit
from srserve.engine.parallel.config import ParallelSpec, ParallelUnsupported, check_parallel
from srserve.engine.parallel.group import ParallelRuntime, init_runtime

__all__ = ["CfgSplit", "ParallelRuntime", "ParallelSpec", "ParallelUnsupported", "check_parallel", "init_runtime"]
