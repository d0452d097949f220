"""CFG parallel: each rank of a CFG pair runs one branch's forward, then both exchange outputs.

The families' predict keeps the serial arithmetic (`uncond + scale * (cond - uncond)` on full
tensors) and the `cache_context("cond" / "uncond")` around each branch; only which forwards run
here changes. Both ranks combine the same two tensors with the same ops, so they stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

Branch = Literal["cond", "uncond"]
BRANCHES: tuple[Branch, Branch] = ("cond", "uncond")


@dataclass(frozen=True)
class CfgSplit:
    """This rank's CFG branch and the group it exchanges outputs with (rank i of the group runs BRANCHES[i])."""

    branch: Branch
    group: dist.ProcessGroup

    def exchange(self, mine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) on every rank of the pair, from each rank's own branch output."""
        mine = mine.contiguous()
        parts = [torch.empty_like(mine) for _ in BRANCHES]
        dist.all_gather(parts, mine, group=self.group)
        return parts[0], parts[1]
