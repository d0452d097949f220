"""Tiny random LoRA adapters for the tiny Wan2.1 pair, written the way real ones are.

`sketch_lora.safetensors` and `render_lora.safetensors` are PEFT/diffusers format: a peft `LoraConfig`
injected into each tiny transformer (`add_adapter`), its factors drawn from a seeded generator, saved
with `WanPipeline.save_lora_weights` (keys `transformer.<module>.lora_A/B.weight`, the adapter config
in the metadata). `sketch_lora_comfy.safetensors` holds the sketch adapter's factors under
ComfyUI/kohya-style keys (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`, with `alpha`),
the format diffusers' `WanPipeline.lora_state_dict` converts; alpha equals the rank, so both files
are the same adapter to the bit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import WanPipeline, WanTransformer3DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from srserve.engine.models.component_config import read_component_config

SKETCH_LORA = "sketch_lora.safetensors"
RENDER_LORA = "render_lora.safetensors"
SKETCH_LORA_COMFY = "sketch_lora_comfy.safetensors"
RANK = 4
# Every attention projection and the feed-forward layers of each block (what video LoRAs usually train).
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
# diffusers' module names -> the original Wan checkpoint's (what ComfyUI-style keys use).
_COMFY_NAMES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def _lora_factors(transformer_folder: str | Path, seed: int) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """A seeded random LoRA for the transformer of a Wan pipeline folder (weights of the base model unused)."""
    config = read_component_config(transformer_folder, "transformer")
    if config is None:
        raise ValueError(f"{str(transformer_folder)!r} has no transformer/ config")
    model = WanTransformer3DModel.from_config(config)
    lora_config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS, init_lora_weights=False)
    model.add_adapter(lora_config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if ".lora_A." in name:  # [rank, in]: unit-variance inputs keep unit variance
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)
            elif ".lora_B." in name:  # [out, rank]: a small update against the base layer
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return get_peft_model_state_dict(model), lora_config


def _comfy_keys(factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT keys (`blocks.0.attn1.to_q.lora_A.weight`) as ComfyUI-style ones, with alpha = rank."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in factors.items():
        module, part = key.rsplit(".lora_", 1)
        block, index, inner = module.split(".", 2)
        base = f"diffusion_model.{block}.{index}.{_COMFY_NAMES[inner]}"
        out[f"{base}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = tensor.contiguous()
        out[f"{base}.alpha"] = torch.tensor(float(RANK))
    return out


def write_tiny_loras(
    out_dir: str | Path, sketch_folder: str | Path, render_folder: str | Path, seed: int = 0
) -> dict[str, Path]:
    """Write the tiny pair's adapters to `out_dir`; returns {file name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for file, folder, offset in ((SKETCH_LORA, sketch_folder, 0), (RENDER_LORA, render_folder, 1)):
        factors, lora_config = _lora_factors(folder, seed + offset)
        WanPipeline.save_lora_weights(
            out,
            transformer_lora_layers=factors,
            weight_name=file,
            transformer_lora_adapter_metadata={**lora_config.to_dict(), "target_modules": sorted(TARGETS)},
        )
        written[file] = out / file
        if file == SKETCH_LORA:
            save_file(_comfy_keys(factors), str(out / SKETCH_LORA_COMFY))
            written[SKETCH_LORA_COMFY] = out / SKETCH_LORA_COMFY
    return written
