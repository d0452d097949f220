"""Write a tiny CogVideoX sketch/render pair (real diffusers classes, random weights, fixed seed).

The pair mirrors CogVideoX-5B -> CogVideoX-2B: the same T5 encoder and VAE weights in both
folders, but the sketch has RoPE, bf16 weights, VAE scaling_factor 0.7 and snr_shift_scale 1.0,
and the render has sin-cos positions, fp16 weights, scaling_factor 1.15258426 and
snr_shift_scale 3.0. The render transformer is narrower and shallower, so one render step costs
about 0.3 of a sketch step on a CPU (2B against 5B: 30 x 1920 against 42 x 3072 wide layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel

from srserve.engine.tiny.tokenizer import build_byte_tokenizer

SKETCH_DIR = "sketch"
RENDER_DIR = "render"
SKETCH_SCALING_FACTOR = 0.7  # CogVideoX-5B's VAE config
RENDER_SCALING_FACTOR = 1.15258426  # CogVideoX-2B's VAE config


@dataclass(frozen=True)
class TinyCogVideoXTransformerSpec:
    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    rotary: bool
    dtype: torch.dtype


@dataclass(frozen=True)
class TinyCogVideoXSpec:
    """Sizes of the tiny pair; defaults give a render step of about 0.3 of a sketch step on a CPU."""

    sketch: TinyCogVideoXTransformerSpec = TinyCogVideoXTransformerSpec(4, 8, 48, True, torch.bfloat16)
    render: TinyCogVideoXTransformerSpec = TinyCogVideoXTransformerSpec(3, 4, 48, False, torch.float16)
    scheduler: Literal["dpm", "ddim"] = "dpm"
    text_dim: int = 64
    text_layers: int = 2
    max_text_seq_length: int = 32
    vae_channels: int = 8
    # Native sizes: 64x64 pixels (8x8 latent), 9 frames (3 latent frames).
    sample_height: int = 8
    sample_width: int = 8
    sample_frames: int = 9
    seed: int = 0


def _transformer(spec: TinyCogVideoXTransformerSpec, pair: TinyCogVideoXSpec) -> CogVideoXTransformer3DModel:
    model = CogVideoXTransformer3DModel(
        num_attention_heads=spec.num_attention_heads,
        attention_head_dim=spec.attention_head_dim,
        in_channels=16,
        out_channels=16,
        time_embed_dim=64,
        text_embed_dim=pair.text_dim,
        num_layers=spec.num_layers,
        sample_width=pair.sample_width,
        sample_height=pair.sample_height,
        sample_frames=pair.sample_frames,
        patch_size=2,
        max_text_seq_length=pair.max_text_seq_length,
        use_rotary_positional_embeddings=spec.rotary,
    )
    # The checkpoints' storage dtype (5B bf16, 2B fp16); cast tensor by tensor, as a converted
    # checkpoint would be, not through ModelMixin.to() (which warns about fp32-kept modules).
    for tensor in (*model.parameters(), *model.buffers()):
        tensor.data = tensor.data.to(spec.dtype)
    return model.eval()


def _scheduler(kind: str, snr_shift_scale: float) -> CogVideoXDDIMScheduler | CogVideoXDPMScheduler:
    # The CogVideoX-5B/2B Diffusers checkpoints' scheduler config; only snr_shift_scale differs.
    cls = CogVideoXDPMScheduler if kind == "dpm" else CogVideoXDDIMScheduler
    return cls(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        snr_shift_scale=snr_shift_scale,
    )


def _vae(channels: int, scaling_factor: float) -> AutoencoderKLCogVideoX:
    return AutoencoderKLCogVideoX(
        block_out_channels=(channels,) * 4,
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=channels // 2,
        temporal_compression_ratio=4,
        sample_height=64,
        sample_width=64,
        scaling_factor=scaling_factor,
    ).eval()


def write_tiny_cogvideox_pair(out_dir: str | Path, spec: TinyCogVideoXSpec | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/sketch` and `<out_dir>/render` as complete CogVideoXPipeline folders."""
    spec = spec or TinyCogVideoXSpec()
    out = Path(out_dir)
    torch.manual_seed(spec.seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=259,
            d_model=spec.text_dim,
            d_kv=16,
            d_ff=spec.text_dim * 2,
            num_layers=spec.text_layers,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    tokenizer = build_byte_tokenizer(model_max_length=spec.max_text_seq_length)
    sketch_vae = _vae(spec.vae_channels, SKETCH_SCALING_FACTOR)
    render_vae = _vae(spec.vae_channels, RENDER_SCALING_FACTOR)
    render_vae.load_state_dict(sketch_vae.state_dict())  # shared weights, different latent scaling
    sketch = _transformer(spec.sketch, spec)
    render = _transformer(spec.render, spec)
    paths = []
    for name, transformer, vae, shift in (
        (SKETCH_DIR, sketch, sketch_vae, 1.0),
        (RENDER_DIR, render, render_vae, 3.0),
    ):
        pipe = CogVideoXPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=_scheduler(spec.scheduler, shift),
        )
        path = out / name
        pipe.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]
