"""Tiny random-weight model pairs, written in Diffusers format so they load like real checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from srserve.engine.tiny import cogvideox, wan, wan22, wan_i2v, wan_vace
from srserve.engine.tiny.cogvideox import TinyCogVideoXSpec, write_tiny_cogvideox_pair
from srserve.engine.tiny.wan import TinyWanSpec, write_tiny_wan_pair
from srserve.engine.tiny.wan22 import TinyWan22Spec, write_tiny_wan22_pair, write_tiny_wan22_ti2v
from srserve.engine.tiny.wan_i2v import TinyWanI2VSpec, write_tiny_wan21_i2v_pair, write_tiny_wan22_i2v_pair
from srserve.engine.tiny.wan_vace import TinyWanVACESpec, write_tiny_wan21_vace_pair, write_tiny_wan22_vace_pair


@dataclass(frozen=True)
class TinyLayout:
    """How one family's tiny pair is written, and where its models lie under the folder it is written to."""

    write: Callable[[str | Path], tuple[Path, Path]]
    sketch: str  # the sketch model's folder, relative to the written folder
    render: str
    pipelines: tuple[str, ...]  # the pipeline folders (each with a model_index.json) a finished write leaves

    def folders(self, root: Path) -> tuple[Path, Path]:
        """(sketch, render) under `root`, as `write(root)` returns them."""
        return root / self.sketch, root / self.render

    def written(self, root: Path) -> bool:
        return all((root / folder / "model_index.json").exists() for folder in self.pipelines)


# By family. wan2.2 is one A14B-shaped folder: its high-noise expert sketches, its low-noise expert renders.
TINY_LAYOUTS: dict[str, TinyLayout] = {
    "wan2.1": TinyLayout(write_tiny_wan_pair, wan.SKETCH_DIR, wan.RENDER_DIR, (wan.SKETCH_DIR, wan.RENDER_DIR)),
    "wan2.2": TinyLayout(
        write_tiny_wan22_pair, wan22.A14B_DIR, f"{wan22.A14B_DIR}/{wan22.LOW_NOISE_SUBFOLDER}", (wan22.A14B_DIR,)
    ),
    "cogvideox": TinyLayout(
        write_tiny_cogvideox_pair,
        cogvideox.SKETCH_DIR,
        cogvideox.RENDER_DIR,
        (cogvideox.SKETCH_DIR, cogvideox.RENDER_DIR),
    ),
    "wan2.1-i2v": TinyLayout(
        write_tiny_wan21_i2v_pair, wan_i2v.SKETCH_DIR, wan_i2v.RENDER_DIR, (wan_i2v.SKETCH_DIR, wan_i2v.RENDER_DIR)
    ),
    "wan2.2-i2v": TinyLayout(
        write_tiny_wan22_i2v_pair,
        wan_i2v.A14B_DIR,
        f"{wan_i2v.A14B_DIR}/{wan22.LOW_NOISE_SUBFOLDER}",
        (wan_i2v.A14B_DIR,),
    ),
    "wan2.1-vace": TinyLayout(
        write_tiny_wan21_vace_pair,
        wan_vace.SKETCH_DIR,
        wan_vace.RENDER_DIR,
        (wan_vace.SKETCH_DIR, wan_vace.RENDER_DIR),
    ),
    "wan2.2-vace": TinyLayout(
        write_tiny_wan22_vace_pair,
        wan_vace.A14B_DIR,
        f"{wan_vace.A14B_DIR}/{wan22.LOW_NOISE_SUBFOLDER}",
        (wan_vace.A14B_DIR,),
    ),
}

__all__ = [
    "TINY_LAYOUTS",
    "TinyCogVideoXSpec",
    "TinyLayout",
    "TinyWan22Spec",
    "TinyWanI2VSpec",
    "TinyWanSpec",
    "TinyWanVACESpec",
    "write_tiny_cogvideox_pair",
    "write_tiny_wan21_i2v_pair",
    "write_tiny_wan21_vace_pair",
    "write_tiny_wan22_i2v_pair",
    "write_tiny_wan22_pair",
    "write_tiny_wan22_ti2v",
    "write_tiny_wan22_vace_pair",
    "write_tiny_wan_pair",
]
