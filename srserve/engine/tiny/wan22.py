"""Write tiny Wan2.2 folders (real diffusers classes, random weights, fixed seed).

`write_tiny_wan22_pair` writes one folder shaped like Wan2.2-T2V-A14B-Diffusers: a WanPipeline with
two transformers of equal size, `transformer` (the high-noise expert) and `transformer_2` (the
low-noise expert), `boundary_ratio` 0.875 in model_index.json and the checkpoint's UniPC flow
scheduler config (flow_shift 3.0). Its umT5 encoder, tokenizer and Wan VAE are built exactly as the
tiny Wan2.1 pair's (same configs, same seed, same order), so they hold the same weights: like the
real checkpoints, whose encoder and VAE are Wan2.1's, a tiny Wan2.1 render model can continue a
tiny Wan2.2 sketch (the cross pair).

`write_tiny_wan22_ti2v` writes a folder shaped like Wan2.2-TI2V-5B: the Wan2.2 VAE (48 latent
channels, 16x spatial compression, patchified), `expand_timesteps`, flow_shift 5.0. It cannot share
latents with the A14B experts or Wan2.1, which is what it is for: the pair srserve must refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from srserve.engine.tiny.tokenizer import build_byte_tokenizer
from srserve.engine.tiny.wan import TinyTransformerSpec, _scheduler, _transformer

A14B_DIR = "Wan2.2-T2V-A14B"
LOW_NOISE_SUBFOLDER = "transformer_2"
TI2V_DIR = "Wan2.2-TI2V-5B"
BOUNDARY_RATIO = 0.875  # Wan2.2-T2V-A14B-Diffusers' model_index.json
TI2V_LATENT_CHANNELS = 48
TI2V_FLOW_SHIFT = 5.0  # Wan2.2-TI2V-5B-Diffusers' scheduler


_EXPERT = TinyTransformerSpec(4, 8, 48, 1536)  # the tiny Wan2.1 sketch model's size


@dataclass(frozen=True)
class TinyWan22Spec:
    """Sizes of the tiny A14B folder: both experts as large as the tiny Wan2.1 sketch model."""

    expert: TinyTransformerSpec = _EXPERT
    boundary_ratio: float = BOUNDARY_RATIO
    # These four must stay the tiny Wan2.1 pair's (TinyWanSpec) for the encoder and VAE weights to match.
    text_dim: int = 64
    text_layers: int = 2
    vae_base_dim: int = 8
    seed: int = 0


def _encoder_and_vae(spec: TinyWan22Spec) -> tuple[UMT5EncoderModel, AutoencoderKLWan]:
    """The tiny Wan2.1 pair's umT5 encoder and VAE, drawn from the same seed in the same order."""
    torch.manual_seed(spec.seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
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
    vae = AutoencoderKLWan(
        base_dim=spec.vae_base_dim,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()
    return text_encoder, vae


def write_tiny_wan22_pair(out_dir: str | Path, spec: TinyWan22Spec | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/Wan2.2-T2V-A14B`; returns (sketch path, render path) as a wan2.2 pair names them.

    The sketch is the folder itself (its `transformer`, the high-noise expert); the render is the
    low-noise expert's own folder, `<folder>/transformer_2`.
    """
    spec = spec or TinyWan22Spec()
    text_encoder, vae = _encoder_and_vae(spec)
    high_noise = _transformer(spec.expert, spec.text_dim).eval()
    low_noise = _transformer(spec.expert, spec.text_dim).eval()
    pipe = WanPipeline(
        tokenizer=build_byte_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=high_noise,
        transformer_2=low_noise,
        scheduler=_scheduler(),
        boundary_ratio=spec.boundary_ratio,
    )
    folder = Path(out_dir) / A14B_DIR
    pipe.save_pretrained(folder)
    return folder, folder / LOW_NOISE_SUBFOLDER


def write_tiny_wan22_ti2v(out_dir: str | Path, seed: int = 0) -> Path:
    """Write `<out_dir>/Wan2.2-TI2V-5B`, a tiny folder with TI2V-5B's latent space (48 channels)."""
    text_encoder, _ = _encoder_and_vae(TinyWan22Spec(seed=seed))  # the same umT5: only the latent space differs
    vae = AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=TI2V_LATENT_CHANNELS,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        latents_mean=[0.0] * TI2V_LATENT_CHANNELS,
        latents_std=[1.0] * TI2V_LATENT_CHANNELS,
    ).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=TI2V_LATENT_CHANNELS,
        out_channels=TI2V_LATENT_CHANNELS,
        text_dim=64,
        freq_dim=256,
        ffn_dim=512,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    ).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=TI2V_FLOW_SHIFT,
        solver_order=2,
    )
    pipe = WanPipeline(
        tokenizer=build_byte_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
        expand_timesteps=True,
    )
    folder = Path(out_dir) / TI2V_DIR
    pipe.save_pretrained(folder)
    return folder
