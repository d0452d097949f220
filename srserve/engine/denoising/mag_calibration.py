"""MagCache calibration: each model's per-step residual-magnitude ratios, written to a file.

MagCache skips a step when the accumulated change of the blocks' residual, predicted from
calibrated per-step ratios, stays under its threshold. The ratios belong to one checkpoint and
scheduler, so a pair has two sets: the sketch model's (from a large-only run over all N steps) and
the render model's (from a small-only run). diffusers' calibration mode measures them; it prints
them and resets when the run reaches its step count, so calibration runs with one step more than
it feeds and reads the state before that reset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers.hooks import HookRegistry, MagCacheConfig
from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK

from srserve.engine.denoising.cache import MAG_RATIOS_FORMAT
from srserve.engine.engine import SRDiffusionEngine
from srserve.engine.request import GenerationRequest, SwitchPolicy


def _head_block(model: torch.nn.Module) -> torch.nn.Module:
    for name in ("blocks", "transformer_blocks"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
            return blocks[0]
    raise ValueError(f"{type(model).__name__} has no transformer blocks MagCache can hook")


def _measure(model: torch.nn.Module, num_steps: int, run: Any) -> list[float]:
    model.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=num_steps + 1))
    try:
        run()
        hook = HookRegistry.check_if_exists_or_initialize(_head_block(model)).get_hook(_MAG_CACHE_LEADER_BLOCK_HOOK)
        states = hook.state_manager._state_cache  # per context; the conditional branch's is the reference
        state = states.get("cond") or states.get("cond_uncond") or next(iter(states.values()))
        ratios = list(state.calibration_ratios)
    finally:
        model.disable_cache()
    if len(ratios) != num_steps:
        raise RuntimeError(f"MagCache calibration saw {len(ratios)} steps, expected {num_steps}")
    return ratios


def calibrate(engine: SRDiffusionEngine, request: GenerationRequest) -> dict[str, Any]:
    """Ratios of the sketch model (large only) and the render model (small only) for `request`."""
    resolved = engine.resolve(request.model_copy(update={"cache": None}))
    n = resolved.num_inference_steps
    encoded = engine.encode(resolved)
    large_only = resolved.model_copy(update={"switch": SwitchPolicy(kind="fixed", step=n)})
    small_only = resolved.model_copy(update={"switch": SwitchPolicy(kind="fixed", step=0)})
    sketch = _measure(engine.sketch_model, n, lambda: engine.sketch(large_only, encoded))
    render = _measure(engine.render_model, n, lambda: engine.render(engine.sketch(small_only, encoded)))
    return {
        "format": MAG_RATIOS_FORMAT,
        "family": engine.family.name,
        "num_inference_steps": n,
        "sketch_path": engine.config.sketch_path,
        "render_path": engine.config.render_path,
        "sketch": sketch,
        "render": render,
    }


def write_ratios(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path
