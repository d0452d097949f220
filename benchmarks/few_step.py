"""Few-step schedules against 50-step CFG on one pair: transformer forwards and denoising time per video.

Modes (one engine, runs interleaved round-robin, medians):

- `large-only-50-cfg`: 50 UniPC steps, guidance 5 (two forwards a step), the large model throughout;
- `srdiffusion-50`: the same with SRDiffusion's default (adaptive) switch to the small model;
- `few-step-large-only`: 4 flow-match Euler steps at timesteps [1000, 750, 500, 250], shift 5, guidance 1
  (one forward a step): the schedule of a step- and CFG-distilled checkpoint (LightX2V's Wan2.1);
- `few-step-split-1`, `few-step-split-2`: that schedule with the large model sketching 1 or 2 steps;
- `few-step-split-2-fused-lora`: the same on an engine whose pair fuses a LoRA adapter into both models
  at load (how a distillation LoRA is served: no per-step cost).

What this measures and what it does not: the forwards and the time are what a schedule costs, on any
weights. Quality needs real weights: the embedded tiny pair has random weights and its LoRA is random
too, so nothing here says whether 4 steps look as good as 50 (a distilled checkpoint is what makes
them). Run with --sketch-model/--render-model (and --sketch-lora/--render-lora for a distillation LoRA)
on a GPU host for that.

    python benchmarks/few_step.py --out benchmarks/results/few_step_tiny.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from srserve.cli.generate import add_model_pair_arguments, model_pair_from_args
from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.engine.adapters.spec import AdapterConfig
from srserve.engine.tiny.lora import RENDER_LORA, SKETCH_LORA, write_tiny_loras

PROMPT = "a red fox running through snow"
TIMESTEPS = [1000, 750, 500, 250]
SHIFT = 5.0
ADAPTER = "distill"
QUALITY_NOTE = (
    "forwards and time only: quality needs real weights (the tiny pair and its LoRA are random, so no mode "
    "here says whether 4 steps look as good as 50)"
)


class Forwards:
    """Transformer forwards per model (a hook on each model's forward)."""

    def __init__(self, engine: SRDiffusionEngine) -> None:
        self.counts = {"sketch": 0, "render": 0}
        for role, model in (("sketch", engine.sketch_model), ("render", engine.render_model)):
            model.register_forward_hook(lambda *_, role=role: self.counts.__setitem__(role, self.counts[role] + 1))

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.counts, 0)


def _modes(steps: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """mode -> (engine, request fields)."""
    cfg = {"num_inference_steps": steps, "guidance_scale": 5.0}
    few = {"scheduler": "euler", "timesteps": TIMESTEPS, "shift": SHIFT, "guidance_scale": 1.0}
    return {
        "large-only-50-cfg": ("plain", {**cfg, "switch": f"fixed:{steps}"}),
        "srdiffusion-50": ("plain", {**cfg, "switch": "adaptive"}),
        "few-step-large-only": ("plain", {**few, "switch": f"fixed:{len(TIMESTEPS)}"}),
        "few-step-split-1": ("plain", {**few, "switch": "fixed:1"}),
        "few-step-split-2": ("plain", {**few, "switch": "fixed:2"}),
        "few-step-split-2-fused-lora": ("fused", {**few, "switch": "fixed:2", "lora": ADAPTER}),
    }


def _fused_config(config: ModelPairConfig, args: argparse.Namespace) -> ModelPairConfig:
    """The pair with one fused adapter: the CLI's --sketch-lora/--render-lora if given, else the tiny LoRAs."""
    if args.sketch_lora or args.render_lora:
        adapter = AdapterConfig(sketch=args.sketch_lora, render=args.render_lora, fuse=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="few-step-loras-"))
        write_tiny_loras(folder, config.sketch_path, config.render_path)
        adapter = AdapterConfig(sketch=str(folder / SKETCH_LORA), render=str(folder / RENDER_LORA), fuse=True)
    return ModelPairConfig.model_validate({**config.model_dump(), "adapters": {ADAPTER: adapter}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_pair_arguments(parser)
    parser.add_argument("--steps", type=int, default=50, help="steps of the CFG baselines")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sketch-lora", default=None, help="a (distillation) LoRA to fuse into the sketch model")
    parser.add_argument("--render-lora", default=None, help="a (distillation) LoRA to fuse into the render model")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lora_args = argparse.Namespace(**{**vars(args), "sketch_lora": None, "render_lora": None})
    config = model_pair_from_args(lora_args)
    engines = {"plain": SRDiffusionEngine(config), "fused": SRDiffusionEngine(_fused_config(config, args))}
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    counters = {name: Forwards(engine) for name, engine in engines.items()}
    modes = _modes(args.steps)
    for engine in engines.values():  # warm-up: first-call costs out of the medians
        engine.generate(GenerationRequest(prompt="warm up", num_inference_steps=2))
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for rep in range(args.repeats):
        for mode, (name, fields) in modes.items():
            engine, counter = engines[name], counters[name]
            counter.reset()
            start = time.perf_counter()
            result = engine.generate(GenerationRequest(prompt=PROMPT, seed=rep, **fields))
            total = time.perf_counter() - start
            samples[mode].append(
                {
                    "denoise_s": result.timings["sketch"] + result.timings["render"],
                    "total_s": total,
                    "forwards": dict(counter.counts),
                    "switch_step": result.switch_step,
                    "num_steps": result.num_steps,
                }
            )
    rows: dict[str, dict[str, Any]] = {}
    for mode, runs in samples.items():
        name, fields = modes[mode]
        rows[mode] = {
            "request": {k: v for k, v in fields.items()},
            "engine": "fused adapter" if name == "fused" else "plain",
            "steps": runs[0]["num_steps"],
            "switch_step": statistics.median(r["switch_step"] for r in runs),
            "sketch_forwards": statistics.median(r["forwards"]["sketch"] for r in runs),
            "render_forwards": statistics.median(r["forwards"]["render"] for r in runs),
            "denoise_s": round(statistics.median(r["denoise_s"] for r in runs), 4),
            "total_s": round(statistics.median(r["total_s"] for r in runs), 4),
        }
    base = rows["large-only-50-cfg"]
    for row in rows.values():
        row["forwards"] = row["sketch_forwards"] + row["render_forwards"]
        row["denoise_speedup"] = round(base["denoise_s"] / row["denoise_s"], 2)
    out = {
        "benchmark": "few_step",
        "model_pair": args.model_pair,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "note": QUALITY_NOTE,
        "modes": rows,
    }
    print(f"{'mode':<30} {'steps':>5} {'switch':>6} {'fwd sketch':>10} {'fwd render':>10} {'denoise s':>10} {'x':>7}")
    for mode, r in rows.items():
        print(
            f"{mode:<30} {r['steps']:>5} {r['switch_step']:>6} {r['sketch_forwards']:>10} {r['render_forwards']:>10} "
            f"{r['denoise_s']:>10.3f} {r['denoise_speedup']:>7.2f}"
        )
    print(f"note: {QUALITY_NOTE}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
