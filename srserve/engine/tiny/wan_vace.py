"""Write tiny Wan VACE folders (real diffusers classes, random weights, fixed seed).

Two WanVACEPipeline folders shaped like Wan2.1-VACE-14B (sketch) and Wan2.1-VACE-1.3B (render): a
`WanVACETransformer3DModel` each, the larger wider and deeper, with the VACE context width of the
real models (`vace_in_channels` 96 = 2 x 16 latent channels + 8 x 8 mask channels), and the tiny
Wan2.1 pair's umT5, tokenizer, VAE and scheduler (same weights).

Both models have two VACE layers. The real 14B has 8 and the 1.3B 15, which srserve runs (each model
reads the scale per its own layers), but diffusers' two-transformer WanVACEPipeline sizes one scale
tensor by its first transformer and refuses a second transformer with another count: equal counts
keep that pipeline, the parity reference, able to run the tiny pair.

`write_tiny_wan22_vace_pair` writes one WanVACEPipeline folder shaped like Wan2.2-VACE-Fun-A14B: two
VACE experts of the tiny 14B's size, `transformer` (high noise) and `transformer_2` (low noise),
`boundary_ratio` 0.875 (the Diffusers conversion's), the same encoder, VAE and scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import WanVACEPipeline, WanVACETransformer3DModel

from srserve.engine.tiny.tokenizer import build_byte_tokenizer
from srserve.engine.tiny.wan import TinyTransformerSpec, _scheduler, transformer_fields
from srserve.engine.tiny.wan22 import LOW_NOISE_SUBFOLDER, TinyWan22Spec, _encoder_and_vae

SKETCH_DIR = "Wan2.1-VACE-14B"
RENDER_DIR = "Wan2.1-VACE-1.3B"
A14B_DIR = "Wan2.2-VACE-Fun-A14B"
BOUNDARY_RATIO = 0.875  # the Wan2.2-VACE-Fun-A14B Diffusers conversion's (WanVACEPipeline's example)
LATENT_CHANNELS = 16
VACE_IN_CHANNELS = 2 * LATENT_CHANNELS + 8 * 8  # kept and regenerated latents, the 8x8-folded mask


@dataclass(frozen=True)
class TinyVACEModel:
    size: TinyTransformerSpec
    vace_layers: tuple[int, ...]


@dataclass(frozen=True)
class TinyWanVACESpec:
    """Sizes of the tiny VACE pair: small enough for parity tests of seconds on two CPU cores."""

    sketch: TinyVACEModel = TinyVACEModel(TinyTransformerSpec(4, 4, 32, 256), (0, 2))
    render: TinyVACEModel = TinyVACEModel(TinyTransformerSpec(2, 2, 32, 128), (0, 1))
    seed: int = 0


def _transformer(model: TinyVACEModel) -> WanVACETransformer3DModel:
    spec = model.size
    return WanVACETransformer3DModel(
        **transformer_fields(spec, TinyWan22Spec.text_dim, in_channels=LATENT_CHANNELS),
        vace_layers=list(model.vace_layers),
        vace_in_channels=VACE_IN_CHANNELS,
    ).eval()


def write_tiny_wan21_vace_pair(out_dir: str | Path, spec: TinyWanVACESpec | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/Wan2.1-VACE-14B` (sketch) and `<out_dir>/Wan2.1-VACE-1.3B` (render)."""
    spec = spec or TinyWanVACESpec()
    text_encoder, vae = _encoder_and_vae(TinyWan22Spec(seed=spec.seed))  # the tiny Wan2.1 pair's weights
    torch.manual_seed(spec.seed + 2)
    paths = []
    for name, model in ((SKETCH_DIR, spec.sketch), (RENDER_DIR, spec.render)):
        pipe = WanVACEPipeline(
            tokenizer=build_byte_tokenizer(),
            text_encoder=text_encoder,
            vae=vae,
            scheduler=_scheduler(),
            transformer=_transformer(model),
        )
        path = Path(out_dir) / name
        pipe.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def write_tiny_wan22_vace_pair(out_dir: str | Path, spec: TinyWanVACESpec | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/Wan2.2-VACE-Fun-A14B`; returns (the folder: high-noise expert, its transformer_2)."""
    spec = spec or TinyWanVACESpec()
    text_encoder, vae = _encoder_and_vae(TinyWan22Spec(seed=spec.seed))
    torch.manual_seed(spec.seed + 3)
    pipe = WanVACEPipeline(
        tokenizer=build_byte_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_scheduler(),
        transformer=_transformer(spec.sketch),
        transformer_2=_transformer(spec.sketch),
        boundary_ratio=BOUNDARY_RATIO,
    )
    folder = Path(out_dir) / A14B_DIR
    pipe.save_pretrained(folder)
    return folder, folder / LOW_NOISE_SUBFOLDER
