"""Write a tiny Wan2.1 sketch/render pair (real diffusers classes, random weights, fixed seed).

The pair mirrors the real 14B/1.3B relationship: same text encoder, VAE, patch size and
scheduler; the render transformer is narrower and shallower so one render step costs about
0.2 of a sketch step, as 1.3B does against 14B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from srserve.engine.tiny.tokenizer import build_byte_tokenizer

SKETCH_DIR = "sketch"
RENDER_DIR = "render"


@dataclass(frozen=True)
class TinyTransformerSpec:
    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    ffn_dim: int


@dataclass(frozen=True)
class TinyWanSpec:
    """Sizes of the tiny pair; defaults are tuned for ~0.2 render/sketch step cost on a CPU."""

    sketch: TinyTransformerSpec = TinyTransformerSpec(4, 8, 48, 1536)
    render: TinyTransformerSpec = TinyTransformerSpec(3, 4, 40, 512)
    text_dim: int = 64
    text_layers: int = 2
    vae_base_dim: int = 8
    seed: int = 0


def transformer_fields(spec: TinyTransformerSpec, text_dim: int, in_channels: int = 16) -> dict[str, object]:
    """The transformer arguments every tiny Wan model shares (Wan's layout at tiny widths); the I2V and VACE
    writers add their own."""
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": spec.num_attention_heads,
        "attention_head_dim": spec.attention_head_dim,
        "in_channels": in_channels,
        "out_channels": 16,
        "text_dim": text_dim,
        "freq_dim": 256,
        "ffn_dim": spec.ffn_dim,
        "num_layers": spec.num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    }


def _transformer(spec: TinyTransformerSpec, text_dim: int) -> WanTransformer3DModel:
    return WanTransformer3DModel(**transformer_fields(spec, text_dim))


def _scheduler() -> UniPCMultistepScheduler:
    # The Wan2.1-T2V Diffusers checkpoints' scheduler config (flow shift 3.0 for 480p).
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=3.0,
        solver_order=2,
    )


def write_tiny_wan_pair(out_dir: str | Path, spec: TinyWanSpec | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/sketch` and `<out_dir>/render` as complete WanPipeline folders.

    Both folders hold the same text encoder, tokenizer, VAE and scheduler, exactly like the
    public 14B and 1.3B Diffusers checkpoints do.
    """
    spec = spec or TinyWanSpec()
    out = Path(out_dir)
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
    tokenizer = build_byte_tokenizer()
    sketch = _transformer(spec.sketch, spec.text_dim).eval()
    render = _transformer(spec.render, spec.text_dim).eval()
    paths = []
    for name, transformer in ((SKETCH_DIR, sketch), (RENDER_DIR, render)):
        pipe = WanPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=_scheduler(),
        )
        path = out / name
        pipe.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]
