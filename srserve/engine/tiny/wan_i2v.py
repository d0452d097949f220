"""Write tiny Wan image-to-video folders (real diffusers and transformers classes, random weights, fixed seed).

`write_tiny_wan21_i2v_pair` writes two WanImageToVideoPipeline folders shaped like Wan2.1-I2V-14B and
Wan2.1-Fun-1.3B-InP: 36 input channels (noise + mask + first-frame latents), image cross-attention
(`image_dim` = the CLIP encoder's width, `added_kv_proj_dim` = the transformer's inner width), a real
`CLIPVisionModel` (tiny config) with its `CLIPImageProcessor`, and the tiny Wan2.1 pair's umT5, tokenizer,
VAE and scheduler (same weights). `write_tiny_wan22_i2v_pair` writes one folder shaped like
Wan2.2-I2V-A14B: two 36-channel experts without image cross-attention, no image encoder,
`boundary_ratio` 0.9.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
from transformers import CLIPVisionConfig, CLIPVisionModel

from srserve.engine.tiny.tokenizer import build_byte_tokenizer
from srserve.engine.tiny.wan import TinyTransformerSpec, _scheduler, transformer_fields
from srserve.engine.tiny.wan22 import LOW_NOISE_SUBFOLDER, TinyWan22Spec, _encoder_and_vae

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor

# CLIPImageProcessor and WanImageToVideoPipeline (which imports it) are imported where used: transformers
# warns on their import when torchvision is absent, and writing a text-to-video pair should not print it.

SKETCH_DIR = "Wan2.1-I2V-14B"
RENDER_DIR = "Wan2.1-Fun-1.3B-InP"
A14B_DIR = "Wan2.2-I2V-A14B"
BOUNDARY_RATIO = 0.9  # Wan2.2-I2V-A14B-Diffusers' model_index.json
A14B_FLOW_SHIFT = 5.0  # Wan2.2's I2V-A14B sample shift
LATENT_CHANNELS = 16
I2V_IN_CHANNELS = 2 * LATENT_CHANNELS + 4  # noise, the 4-frame mask, first-frame latents


_SKETCH = TinyTransformerSpec(4, 8, 48, 1536)  # the tiny Wan2.1 pair's sizes
_RENDER = TinyTransformerSpec(3, 4, 40, 512)


@dataclass(frozen=True)
class TinyWanI2VSpec:
    """Sizes of the tiny I2V folders: the tiny Wan2.1 pair's transformers, with a tiny CLIP ViT."""

    sketch: TinyTransformerSpec = _SKETCH
    render: TinyTransformerSpec = _RENDER
    clip_width: int = 32
    clip_layers: int = 2
    clip_image_size: int = 32
    seed: int = 0


def _transformer(spec: TinyTransformerSpec, image_dim: int | None) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        **transformer_fields(spec, TinyWan22Spec.text_dim, in_channels=I2V_IN_CHANNELS),
        image_dim=image_dim,
        added_kv_proj_dim=None if image_dim is None else spec.num_attention_heads * spec.attention_head_dim,
    ).eval()


def _clip(spec: TinyWanI2VSpec) -> tuple[CLIPImageProcessor, CLIPVisionModel]:
    """A CLIP ViT as Wan2.1-I2V's (ViT-H/14: its penultimate hidden states are the image embeddings), tiny."""
    encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=spec.clip_width,
            intermediate_size=spec.clip_width * 2,
            num_hidden_layers=spec.clip_layers,
            num_attention_heads=4,
            image_size=spec.clip_image_size,
            patch_size=8,
            projection_dim=spec.clip_width,
        )
    ).eval()
    from transformers import CLIPImageProcessor

    side = spec.clip_image_size
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return processor, encoder


def write_tiny_wan21_i2v_pair(out_dir: str | Path, spec: TinyWanI2VSpec | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/Wan2.1-I2V-14B` (sketch) and `<out_dir>/Wan2.1-Fun-1.3B-InP` (render)."""
    spec = spec or TinyWanI2VSpec()
    text_encoder, vae = _encoder_and_vae(TinyWan22Spec(seed=spec.seed))  # the tiny Wan2.1 pair's weights
    from diffusers import WanImageToVideoPipeline

    processor, encoder = _clip(spec)
    paths = []
    for name, size in ((SKETCH_DIR, spec.sketch), (RENDER_DIR, spec.render)):
        pipe = WanImageToVideoPipeline(
            tokenizer=build_byte_tokenizer(),
            text_encoder=text_encoder,
            vae=vae,
            scheduler=_scheduler(),
            image_processor=processor,
            image_encoder=encoder,
            transformer=_transformer(size, spec.clip_width),
        )
        path = Path(out_dir) / name
        pipe.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def write_tiny_wan22_i2v_pair(out_dir: str | Path, spec: TinyWan22Spec | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/Wan2.2-I2V-A14B`; returns (the folder: high-noise expert, its transformer_2)."""
    spec = spec or TinyWan22Spec(boundary_ratio=BOUNDARY_RATIO)
    from diffusers import WanImageToVideoPipeline

    text_encoder, vae = _encoder_and_vae(spec)
    torch.manual_seed(spec.seed + 1)
    pipe = WanImageToVideoPipeline(
        tokenizer=build_byte_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=A14B_FLOW_SHIFT,
            solver_order=2,
        ),
        transformer=_transformer(spec.expert, None),
        transformer_2=_transformer(spec.expert, None),
        boundary_ratio=spec.boundary_ratio,
    )
    folder = Path(out_dir) / A14B_DIR
    pipe.save_pretrained(folder)
    return folder, folder / LOW_NOISE_SUBFOLDER
