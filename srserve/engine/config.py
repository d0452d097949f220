"""Model pair configuration: which checkpoints form the pair and where/how they run.

Fields and paths only: the family's check that the two folders fit together is
`srserve.engine.families.check_pair(config)` (the families read this model; it knows none of them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from srserve.engine.adapters.spec import AdapterConfig, AdapterName
from srserve.engine.denoising.schedule import SCHEDULER_NAMES, ScheduleBounds
from srserve.engine.models.attention import AttentionBackend
from srserve.engine.request import RequestDefaults

if TYPE_CHECKING:  # torch is imported where a device or dtype is resolved, not to read or validate a pair
    import torch

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]

# Families of two Wan2.2 experts switched at a boundary: those with guidance_scale_2.
EXPERT_FAMILIES = ("wan2.2", "wan2.2-i2v", "wan2.2-vace")
TINY_DEFAULTS = RequestDefaults(height=64, width=64, num_frames=17, num_inference_steps=20)
TINY_COGVIDEOX_DEFAULTS = RequestDefaults(height=64, width=64, num_frames=9, num_inference_steps=20)
# Wan2.2-T2V-A14B's own defaults are 40 steps at 480p or 720p; the tiny folder keeps the tiny Wan2.1 shape.
TINY_WAN22_DEFAULTS = TINY_DEFAULTS
# The embedded tiny pairs by name: (family, request defaults); srserve.engine.tiny lays out their folders.
TINY_PAIRS: dict[str, tuple[str, RequestDefaults]] = {
    "tiny-wan2.1": ("wan2.1", TINY_DEFAULTS),
    "tiny-wan2.2": ("wan2.2", TINY_WAN22_DEFAULTS),
    "tiny-cogvideox": ("cogvideox", TINY_COGVIDEOX_DEFAULTS),
    "tiny-wan2.1-i2v": ("wan2.1-i2v", TINY_DEFAULTS),
    "tiny-wan2.2-i2v": ("wan2.2-i2v", TINY_WAN22_DEFAULTS),
    "tiny-wan2.1-vace": ("wan2.1-vace", TINY_DEFAULTS),
    "tiny-wan2.2-vace": ("wan2.2-vace", TINY_WAN22_DEFAULTS),
}
TINY_ALIASES = {"tiny": "tiny-wan2.1"}


def srserve_home() -> Path:
    """Where srserve keeps generated tiny models; `SRSERVE_HOME` overrides."""
    return Path(os.environ.get("SRSERVE_HOME", Path.home() / ".cache" / "srserve"))


class ModelPairConfig(BaseModel):
    """A sketch (large) and render (small) checkpoint of one family, as local Diffusers folders."""

    model_config = ConfigDict(extra="forbid")

    family: str = "wan2.1"
    name: str = "wan2.1"
    sketch_path: str
    render_path: str
    text_encoder_path: str | None = Field(None, description="defaults to the sketch folder")
    vae_path: str | None = Field(None, description="defaults to the render folder")
    device: str = "auto"
    dtype: DTypeName = "auto"
    vae_dtype: DTypeName = "float32"
    text_encoder_dtype: DTypeName = "auto"
    image_encoder_dtype: DTypeName = Field(
        "float32", description="image-to-video: the CLIP image encoder's dtype (diffusers' examples run it in float32)"
    )
    render_dtype: DTypeName | None = Field(
        None, description="the render transformer's dtype; None: `dtype` (CogVideoX-2B prefers float16, 5B bfloat16)"
    )
    max_sequence_length: int | None = Field(
        None, ge=8, le=4096, description="text tokens; None: the family's (Wan 512, CogVideoX the transformers' 226)"
    )
    use_dynamic_cfg: bool = Field(False, description="CogVideoX only: CogVideoXPipeline's use_dynamic_cfg schedule")
    guidance_scale_2: float | None = Field(
        None,
        ge=0.0,
        le=50.0,
        description="wan2.2 only: the render model's CFG scale (WanPipeline's guidance_scale_2, for the low-noise "
        "expert; Wan2.2-T2V-A14B suggests 3.0 with guidance_scale 4.0); None: the request's guidance_scale",
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None keeps torch's")
    attention_backend: AttentionBackend = Field(
        "native", description="diffusers attention backend of both transformers (a pool may override it)"
    )
    compile: bool = Field(
        False,
        description="regional torch.compile of both transformers' repeated blocks (diffusers' compile_repeated_blocks) "
        "at load; the first step of each new shape compiles (seconds on a GPU, longer on a CPU)",
    )
    defaults: RequestDefaults = RequestDefaults()
    schedule: ScheduleBounds = Field(
        ScheduleBounds(),
        description="what requests may choose of the schedule (scheduler, steps, explicit lists, shift, guidance); "
        "the defaults must lie within it",
    )
    adapters: dict[AdapterName, AdapterConfig] = Field(
        default_factory=dict, description="LoRA adapters by name, which a request's `lora` names (docs/engine.md)"
    )
    adapter_cache_size: int = Field(
        4, ge=1, le=256, description="unfused adapters kept loaded per transformer (LRU; per engine, so per replica)"
    )

    @model_validator(mode="after")
    def _guidance_scale_2_is_wan22s(self) -> ModelPairConfig:
        if self.guidance_scale_2 is not None and self.family not in EXPERT_FAMILIES:
            raise ValueError(
                f"guidance_scale_2 applies to family {' or '.join(EXPERT_FAMILIES)} (the low-noise expert), "
                f"not {self.family!r}"
            )
        return self

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> ModelPairConfig:
        problems = self.schedule.problems(self.defaults, self.family, SCHEDULER_NAMES)
        if problems:
            raise ValueError("defaults outside the pair's schedule bounds: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _no_compile_with_switched_adapters(self) -> ModelPairConfig:
        switched = sorted(name for name, adapter in self.adapters.items() if not adapter.fuse)
        if self.compile and switched:
            raise ValueError(
                f"compile: adapters {', '.join(switched)} are switched per job, which changes the compiled blocks' "
                "modules; fuse them (fuse: true) or set compile: false"
            )
        return self

    def resolved_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_dtype(self, name: DTypeName) -> torch.dtype:
        """`auto` is bf16 on CUDA and float32 on CPU."""
        import torch

        if name == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]

    @classmethod
    def tiny_pair(
        cls, pair: str, /, root: str | Path | None = None, write: bool = True, **overrides: object
    ) -> ModelPairConfig:
        """An embedded tiny pair by name (`tiny` is Wan2.1), written on first use (seconds, no network) unless
        `write` is off; under `root`, else under srserve_home()/tiny/<family>."""
        from srserve.engine.tiny import TINY_LAYOUTS

        key = TINY_ALIASES.get(pair, pair)
        if key not in TINY_PAIRS:
            raise ValueError(f"unknown tiny pair {pair!r}; known: {', '.join([*TINY_ALIASES, *TINY_PAIRS])}")
        family, defaults = TINY_PAIRS[key]
        layout = TINY_LAYOUTS[family]
        base = Path(root) if root is not None else srserve_home() / "tiny" / family
        if write and not layout.written(base):
            _write_beside(base, layout.write)
        sketch, render = layout.folders(base)
        fields: dict[str, object] = {
            "family": family,
            "name": key,
            "sketch_path": str(sketch),
            "render_path": str(render),
            "defaults": defaults,
            "device": "cpu",
        }
        fields.update(overrides)
        return cls.model_validate(fields)

    @classmethod
    def tiny(cls, root: str | Path | None = None, write: bool = True, **overrides: object) -> ModelPairConfig:
        """The embedded tiny Wan2.1 pair (`tiny_pair("tiny")`)."""
        return cls.tiny_pair("tiny-wan2.1", root, write, **overrides)

    @classmethod
    def tiny_cogvideox(cls, root: str | Path | None = None, write: bool = True, **overrides: object) -> ModelPairConfig:
        """The embedded tiny CogVideoX pair (5B-like sketch, 2B-like render)."""
        return cls.tiny_pair("tiny-cogvideox", root, write, **overrides)

    @classmethod
    def tiny_wan22(cls, root: str | Path | None = None, write: bool = True, **overrides: object) -> ModelPairConfig:
        """The embedded tiny Wan2.2 A14B folder: its high-noise expert sketches, its low-noise expert renders."""
        return cls.tiny_pair("tiny-wan2.2", root, write, **overrides)


def _write_beside(base: Path, writer: Callable[[Path], object]) -> None:
    """Write a tiny pair beside `base`, then rename it there, so concurrent processes never load half of one."""
    staging = base.with_name(f"{base.name}.tmp-{os.getpid()}")
    writer(staging)
    base.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(base)
    except OSError:  # another process won the race; its pair is identical
        shutil.rmtree(staging, ignore_errors=True)
