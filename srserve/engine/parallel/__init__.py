"""Multi-device replicas: Ulysses / ring sequence parallel (diffusers' context parallelism) and CFG
parallel across the ranks of one torch.distributed group. No Ray here: the serving layer starts the
ranks, this package makes one engine per rank run the same job SPMD. See docs/parallel.md.

Names are exported lazily (PEP 562), so importing `srserve.engine.parallel.config` to check a
pool's degree does not bring in torch.distributed through this package."""

from __future__ import annotations

from typing import Any

__all__ = ["CfgSplit", "ParallelRuntime", "ParallelSpec", "ParallelUnsupported", "check_parallel", "init_runtime"]


def __getattr__(name: str) -> Any:
    if name == "CfgSplit":
        from srserve.engine.parallel import cfg as module
    elif name in ("ParallelSpec", "ParallelUnsupported", "check_parallel"):
        from srserve.engine.parallel import config as module
    elif name in ("ParallelRuntime", "init_runtime"):
        from srserve.engine.parallel import group as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
