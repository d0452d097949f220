"""Analytic FLOPs of one Wan transformer forward pass (multiply-add = 2 FLOPs), for achieved TFLOP/s.

Counts the matmuls that dominate: per block, self-attention (QKV/out projections and the two
attention products over all video tokens), cross-attention to the text tokens, and the FFN; plus
patch embedding, text/time embeddings and the output projection. Norms, RoPE and elementwise ops
are left out (a few percent at most).
"""

from __future__ import annotations

from typing import Any


def video_tokens(config: dict[str, Any], width: int, height: int, num_frames: int, vae_stride=(4, 8, 8)) -> int:
    pt, ph, pw = config["patch_size"]
    t = (num_frames - 1) // vae_stride[0] + 1
    return (t // pt) * (height // vae_stride[1] // ph) * (width // vae_stride[2] // pw)


def block_flops(d: int, f: int, lv: int, lt: int) -> int:
    """One transformer block over `lv` video tokens: self-attention, cross-attention to `lt` text tokens, FFN."""
    self_attn = 8 * lv * d * d + 4 * lv * lv * d
    cross_attn = 4 * lv * d * d + 4 * lt * d * d + 4 * lv * lt * d
    ffn = 4 * lv * d * f
    return self_attn + cross_attn + ffn


def vace_extra_flops(config: dict[str, Any], width: int, height: int, num_frames: int, text_tokens: int) -> float:
    """What a WanVACETransformer3DModel adds to the forward of its WanTransformer3DModel (no reference frames).

    diffusers' model patch-embeds the VACE context (`vace_in_channels`) to as many tokens as the video, then
    runs one block per `vace_layers` entry over them: a full transformer block (self-attention, cross-attention
    to the text, FFN) plus its output projection (d x d), the first also an input projection (d x d). The
    hints it adds to the main blocks' outputs are elementwise (not counted, as norms are not).
    """
    d = config["num_attention_heads"] * config["attention_head_dim"]
    lv = video_tokens(config, width, height, num_frames)
    pt, ph, pw = config["patch_size"]
    per_vace_block = block_flops(d, config["ffn_dim"], lv, text_tokens) + 2 * lv * d * d
    embed = 2 * lv * config["vace_in_channels"] * pt * ph * pw * d + 2 * lv * d * d
    return float(len(config["vace_layers"]) * per_vace_block + embed)


def transformer_forward_flops(
    config: dict[str, Any], width: int, height: int, num_frames: int, text_tokens: int, batch: int = 1
) -> float:
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f = config["ffn_dim"]
    n_layers = config["num_layers"]
    lv = video_tokens(config, width, height, num_frames)
    lt = text_tokens
    pt, ph, pw = config["patch_size"]
    patch_in = config["in_channels"] * pt * ph * pw
    per_block = block_flops(d, f, lv, lt)
    patch_out = config["out_channels"] * pt * ph * pw
    embed = 2 * lv * patch_in * d + 2 * lt * (config["text_dim"] * d + d * d) + 2 * lv * d * patch_out
    return float(batch * (n_layers * per_block + embed))


def umt5_encoder_flops(config: dict[str, Any], tokens: int) -> float:
    d = config["d_model"]
    inner = config["num_heads"] * config["d_kv"]
    per_layer = 2 * tokens * d * inner * 4 + 4 * tokens * tokens * inner + 3 * 2 * tokens * d * config["d_ff"]
    return float(config["num_layers"] * per_layer)


# Dense BF16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched by device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def device_peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # ordered so "H100 PCIe" wins over "H100"
        if key.lower() in device_name.lower():
            return value
    return None
