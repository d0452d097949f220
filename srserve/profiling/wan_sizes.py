"""Architectures to profile: the real Wan2.1 sizes (14B and 1.3B transformers, the Wan VAE, the
umT5-XXL text encoder) and a scaled-down preset with the same structure for CPU tests.

Real sizes follow the diffusers conversion of the public checkpoints (docs/algorithm.md): 1.3B = 30 layers,
12 heads x 128, ffn 8960; 14B = 40 layers, 40 heads x 128, ffn 13824; umT5-XXL d_model 4096,
24 layers, 64 heads x 64, d_ff 10240, vocab 256384; the VAE is AutoencoderKLWan's default config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class OutputShape(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    width: int
    height: int
    num_frames: int


class ArchPreset(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    large: dict[str, Any]
    small: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_tokens: int
    shapes: tuple[OutputShape, ...]
    steps: int = 50


def _transformer(layers: int, heads: int, head_dim: int, ffn: int, text_dim: int) -> dict[str, Any]:
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": text_dim,
        "freq_dim": 256,
        "ffn_dim": ffn,
        "num_layers": layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    }


WAN21 = ArchPreset(
    name="wan2.1",
    large=_transformer(40, 40, 128, 13824, 4096),
    small=_transformer(30, 12, 128, 8960, 4096),
    vae={},  # AutoencoderKLWan defaults are the Wan2.1 VAE
    text_encoder={
        "vocab_size": 256384,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
    },
    text_tokens=512,
    shapes=(
        OutputShape(name="480p", width=832, height=480, num_frames=81),
        OutputShape(name="720p", width=1280, height=720, num_frames=81),
    ),
)

# Wan2.1-VACE-14B and -1.3B: the T2V transformers plus VACE blocks (diffusers' conversion of the public
# checkpoints: the 14B's at every 5th layer, 8 of them; the 1.3B's at every 2nd, 15), reading a 96-channel
# context (2 x 16 latent channels + the 8 x 8 folded mask).
WAN21_VACE_LAYERS = {"large": list(range(0, 40, 5)), "small": list(range(0, 30, 2))}
VACE_IN_CHANNELS = 96
WAN21_VACE = {
    role: {**getattr(WAN21, role), "vace_layers": layers, "vace_in_channels": VACE_IN_CHANNELS}
    for role, layers in WAN21_VACE_LAYERS.items()
}

# The same structure scaled down so a CPU runs it in seconds (tests, dry runs of the profiler).
TINY = ArchPreset(
    name="tiny",
    large=_transformer(2, 4, 16, 128, 32),
    small=_transformer(1, 2, 16, 64, 32),
    vae={"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1},
    text_encoder={
        "vocab_size": 300,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 1,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
    },
    text_tokens=16,
    shapes=(
        OutputShape(name="small", width=32, height=32, num_frames=5),
        OutputShape(name="large", width=64, height=32, num_frames=5),
    ),
    steps=4,
)

PRESETS: dict[str, ArchPreset] = {"wan2.1": WAN21, "tiny": TINY}
PresetName = Literal["wan2.1", "tiny"]
