"""A pool's parallel degree (`parallel: {ulysses: U, ring: R, cfg: C}`) and what may run it.

A replica spans U x R x C devices. Ulysses and ring split the token sequence of every transformer
forward (diffusers' context parallelism, `ModelMixin.enable_parallelism`); CFG parallel runs the
conditional and unconditional forwards of a step on different ranks. Checked before any weights
load, so a misconfigured pool fails at build time with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # torch only for annotations: serving code checks a pool's degree without loading it
    import torch

    from srserve.engine.families.base import ModelFamily


class ParallelUnsupported(ValueError):
    """This degree cannot run for this family, attention backend or device; the message says why."""


# diffusers 0.42.1 attention backends registered with `supports_context_parallel=True` (of those srserve offers).
CONTEXT_PARALLEL_BACKENDS = frozenset({"native", "_native_cudnn", "_native_flash", "flash", "sage"})
# Ring attention merges partial results by their log-sum-exp: only kernels that return it (all CUDA-only).
RING_BACKENDS = frozenset({"_native_cudnn", "_native_flash", "flash", "sage"})
# Families whose transformer declares a `_cp_plan` and whose predict can split its CFG branches.
CONTEXT_PARALLEL_FAMILIES = frozenset({"wan2.1", "wan2.2"})
CFG_PARALLEL_FAMILIES = frozenset({"wan2.1", "wan2.2"})
# Families with no multi-device replica yet, and why (checked before the per-kind rules).
_IMAGE_TO_VIDEO = (
    "image-to-video has no multi-device parity test yet: neither context parallelism with the image "
    "cross-attention's extra tokens nor the CFG split with the image condition was checked against one device"
)
_VIDEO_EDITING = (
    "video editing has no multi-device parity test yet: context parallelism over the VACE blocks' control "
    "tokens was not checked against one device"
)
NO_PARALLEL_FAMILIES: dict[str, str] = {
    "wan2.1-i2v": _IMAGE_TO_VIDEO,
    "wan2.2-i2v": _IMAGE_TO_VIDEO,
    "wan2.1-vace": _VIDEO_EDITING,
    "wan2.2-vace": _VIDEO_EDITING,
}


class ParallelSpec(BaseModel):
    """Devices per replica = ulysses x ring x cfg; all 1 is the ordinary one-device replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ulysses: int = Field(1, ge=1, le=64, description="Ulysses degree: attention heads split by all-to-all")
    ring: int = Field(1, ge=1, le=64, description="ring degree: needs an LSE-returning backend (flash), CUDA only")
    cfg: int = Field(1, ge=1, le=2, description="2: conditional and unconditional forwards on different ranks")
    timeout_s: float = Field(
        120.0, gt=0, description="collective timeout: a dead or stuck rank fails the job after this long, never hangs"
    )

    @model_validator(mode="after")
    def _one_kind_of_sequence_parallel(self) -> ParallelSpec:
        if self.ulysses > 1 and self.ring > 1:
            # diffusers' unified (ulysses x ring) attention exists but is untested here; refuse rather than guess.
            raise ValueError("set ulysses or ring above 1, not both (unified attention is not supported by srserve)")
        return self

    @property
    def context_degree(self) -> int:
        """Ranks that share one sequence (one CFG branch)."""
        return self.ulysses * self.ring

    @property
    def world_size(self) -> int:
        return self.context_degree * self.cfg

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def label(self) -> str:
        """`1`, `u2`, `c2`, `u2xc2`, `r4xc2`: how profiles, plans and logs name a degree."""
        parts = [
            f"{name}{value}" for name, value in (("u", self.ulysses), ("r", self.ring), ("c", self.cfg)) if value > 1
        ]
        return "x".join(parts) or "1"

    @classmethod
    def parse(cls, label: str) -> ParallelSpec:
        """The inverse of `label` (`u2xc2` -> ulysses 2, cfg 2)."""
        text = label.strip().lower()
        if text in ("", "1"):
            return cls()
        names = {"u": "ulysses", "r": "ring", "c": "cfg"}
        fields: dict[str, int] = {}
        for part in text.split("x"):
            if len(part) < 2 or part[0] not in names or not part[1:].isdigit() or names[part[0]] in fields:
                raise ValueError(f"parallel degree {label!r}: expected e.g. 1, u2, c2, u2xc2 or r2")
            fields[names[part[0]]] = int(part[1:])
        return cls(**fields)


def attention_heads(family: ModelFamily, sketch_path: str, render_path: str) -> dict[str, int]:
    """Attention heads of the pair's transformers, read from the folders (no weights) where they exist."""
    heads = {}
    for label, path in (("sketch", sketch_path), ("render", render_path)):
        config = family.transformer_config(path, label == "render") if Path(path).is_dir() else None
        if config and config.get("num_attention_heads"):
            heads[label] = int(config["num_attention_heads"])
    return heads


def check_parallel(
    spec: ParallelSpec,
    family: str,
    backend: str,
    device: torch.device,
    heads: dict[str, int] | None = None,
) -> None:
    """Raise ParallelUnsupported, naming the reason, unless `spec` can run here.

    `heads`: attention heads per transformer (label -> count), from the folders' configs: Ulysses
    splits heads, so each count must divide by the degree.
    """
    if not spec.enabled:
        return
    if family in NO_PARALLEL_FAMILIES:
        raise ParallelUnsupported(
            f"parallel {spec.label()}: family {family!r} runs on one device per replica "
            f"({NO_PARALLEL_FAMILIES[family]})"
        )
    if spec.context_degree > 1:
        if family not in CONTEXT_PARALLEL_FAMILIES:
            raise ParallelUnsupported(
                f"ulysses/ring: family {family!r} has no context-parallel plan (diffusers' `_cp_plan`); "
                f"supported: {', '.join(sorted(CONTEXT_PARALLEL_FAMILIES))}"
            )
        if backend not in CONTEXT_PARALLEL_BACKENDS:
            raise ParallelUnsupported(
                f"attention_backend {backend!r} does not support context parallelism in diffusers; "
                f"use one of {', '.join(sorted(CONTEXT_PARALLEL_BACKENDS))}"
            )
    if spec.ring > 1 and (backend not in RING_BACKENDS or device.type != "cuda"):
        raise ParallelUnsupported(
            f"ring attention needs a backend that returns the log-sum-exp ({', '.join(sorted(RING_BACKENDS))}) "
            f"on CUDA; this pool runs {backend!r} on {device.type}. Use ulysses instead"
        )
    if spec.cfg > 1 and family not in CFG_PARALLEL_FAMILIES:
        raise ParallelUnsupported(
            f"cfg: 2 is not supported for family {family!r}: its pipeline runs both CFG branches as one batched "
            "forward, and splitting that batch changes the matmul shapes, so the result would not be the serial "
            "one bit for bit; use cfg: 1"
        )
    for label, count in (heads or {}).items():
        if spec.ulysses > 1 and count % spec.ulysses:
            raise ParallelUnsupported(
                f"ulysses {spec.ulysses} does not divide the {label} transformer's {count} attention heads"
            )
