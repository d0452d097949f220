"""Speed knobs on one pair at equal steps: large-only, SRDiffusion, SRDiffusion + each step cache,
and each cache alone on the large model. One run, modes interleaved round-robin, medians.

For each mode: the denoising time (sketch + render) and end to end, the speedup over large-only,
the share of transformer computations actually run (a counter on each model's last block), and
the PSNR of the decoded frames against large-only's for the same prompt and seed.

What the PSNR does and does not tell here: on the embedded tiny pair the weights are random, so it
measures how far each knob moves the output of *these* networks, not visual quality; a cache that
skips more moves it further. The ranking of knobs by speed is meaningful on any weights; the PSNR
values only on trained checkpoints (run with --sketch-model/--render-model on a GPU host).

    python benchmarks/speed_knobs.py --out benchmarks/results/speed_knobs_tiny.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from srserve.cli.generate import add_model_pair_arguments, model_pair_from_args
from srserve.engine import GenerationRequest, SRDiffusionEngine
from srserve.engine.denoising.cache import CacheSpec, with_ratios_file
from srserve.engine.denoising.mag_calibration import calibrate, write_ratios

CACHES = ("first_block:0.2", "taylorseer:3", "mag:0.3")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _db(value: float) -> float | None:
    """Rounded dB; None for identical frames (infinite PSNR, which JSON cannot carry)."""
    return None if math.isinf(value) else round(value, 2)


class Computations:
    """Full computations of each model's last block (a cache's skipped steps do not reach it)."""

    def __init__(self, engine: SRDiffusionEngine) -> None:
        self.count = 0
        for model in {id(m): m for m in (engine.sketch_model, engine.render_model)}.values():
            blocks = getattr(model, "blocks", None) or model.transformer_blocks
            inner = next(m for m in blocks[-1].modules() if isinstance(m, torch.nn.Linear))
            inner.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_pair_arguments(parser)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--switch", default="fixed:0.3", help="SRDiffusion's switch for the split modes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    engine = SRDiffusionEngine(model_pair_from_args(args))
    if engine.config.num_threads:
        torch.set_num_threads(engine.config.num_threads)
    n = args.steps
    prompt = "a red fox running through snow"
    ratios = str(
        write_ratios(
            calibrate(engine, GenerationRequest(prompt=prompt, num_inference_steps=n)),
            Path(tempfile.mkdtemp()) / "mag_ratios.json",
        )
    )
    large = f"fixed:{n}"
    modes: dict[str, tuple[str, str | None]] = {"large-only": (large, None), "srdiffusion": (args.switch, None)}
    for cache in CACHES:
        modes[f"srdiffusion + {cache}"] = (args.switch, cache)
    for cache in CACHES:
        modes[f"large-only + {cache}"] = (large, cache)
    counter = Computations(engine)
    engine.generate(GenerationRequest(prompt="warm up", num_inference_steps=2))
    runs: dict[str, list[tuple[float, float, int, object]]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        for mode, (switch, cache) in modes.items():
            request = GenerationRequest(prompt=prompt, seed=rep, num_inference_steps=n, switch=switch, cache=cache)
            if request.cache is not None:
                request = request.model_copy(update={"cache": with_ratios_file(request.cache, ratios)})
            counter.count = 0
            start = time.perf_counter()
            result = engine.generate(request, through_bytes=True)
            total = time.perf_counter() - start
            denoise = result.timings["sketch"] + result.timings["render"]
            runs[mode].append((total, denoise, counter.count, result))

    cfg = 2 if engine.resolve(GenerationRequest(prompt="x")).guidance_scale > 1 else 1
    full = n * cfg
    rows = {}
    for mode, samples in runs.items():
        denoise = statistics.median(s[1] for s in samples)
        total = statistics.median(s[0] for s in samples)
        rows[mode] = {
            "switch": modes[mode][0],
            "cache": str(CacheSpec.parse(modes[mode][1])) if modes[mode][1] else "none",
            "denoise_s": round(denoise, 4),
            "total_s": round(total, 4),
            "computed_fraction": round(statistics.median(s[2] for s in samples) / full, 3),
            "psnr_vs_large_db": _db(
                statistics.median(psnr(s[3].frames, runs["large-only"][i][3].frames) for i, s in enumerate(samples))
            ),
        }
    base = rows["large-only"]
    for row in rows.values():
        row["denoise_speedup"] = round(base["denoise_s"] / row["denoise_s"], 3)
        row["total_speedup"] = round(base["total_s"] / row["total_s"], 3)
    out = {
        "benchmark": "speed_knobs",
        "model_pair": args.model_pair,
        "steps": n,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "note": "random-weight tiny pair: PSNR shows how far a knob moves these networks' output, not quality",
        "modes": rows,
    }
    print(f"{'mode':<32} {'denoise s':>10} {'speedup':>8} {'total s':>8} {'computed':>9} {'PSNR dB':>8}")
    for mode, r in rows.items():
        print(
            f"{mode:<32} {r['denoise_s']:>10.3f} {r['denoise_speedup']:>8.2f} {r['total_s']:>8.3f} "
            f"{r['computed_fraction']:>9.2f} {r['psnr_vs_large_db'] or 'identical':>8}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
