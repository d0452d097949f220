"""Engine speedup on the tiny pair: large-only, small-only and SRDiffusion (fixed, adaptive), one run.

Reports each mode's end-to-end latency, its speedup over large-only, and the bound the switch
step implies given the measured per-step costs: N*L / (k*L + (N-k)*S) for the denoising part and
(E + N*L + D) / (E + k*L + (N-k)*S + D) end to end (E: encode, D: decode + export).
Modes are interleaved round-robin so machine noise hits them alike; figures are medians.

    python benchmarks/engine_speedup.py --out benchmarks/results/engine_speedup_tiny.json
    python benchmarks/engine_speedup.py --model-pair tiny-cogvideox \
        --out benchmarks/results/engine_speedup_tiny_cogvideox.json
    python benchmarks/engine_speedup.py --model-pair tiny-wan2.1-i2v \
        --out benchmarks/results/engine_speedup_tiny_wan21_i2v.json
    python benchmarks/engine_speedup.py --model-pair tiny-wan2.1-vace \
        --out benchmarks/results/engine_speedup_tiny_vace.json

An image-to-video pair animates one fixed random-noise image (the same for every mode and repeat). A
video-editing (VACE) pair inpaints one fixed video: smooth moving gradients with a box to regenerate
that moves across them (its mask), both written as mp4 and decoded as a served request's are. Image and
video conditioning run in the sketch stage once per request: the sketch stage of small-only (no steps)
measures it, and it is taken out of the large model's per-step cost and kept in the fixed overhead.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.engine.families import edits_video, takes_image
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.inputs.image import describe_image, load_image
from srserve.engine.inputs.video_input import describe_video, load_video
from srserve.engine.video import encode_mp4

PAIRS = ["tiny", "tiny-cogvideox", "tiny-wan2.1-i2v", "tiny-wan2.2-i2v", "tiny-wan2.1-vace"]


def input_image(config: ModelPairConfig) -> tuple[dict, dict]:
    """An image-to-video pair's input image: (the request's field, the engine's argument); empty for text-to-video."""
    if not takes_image(config.family):
        return {}, {}
    d = config.defaults
    pixels = np.random.default_rng(0).integers(0, 256, (d.height, d.width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    data = out.getvalue()
    return {"input_reference": describe_image(data)}, {"image": load_image(data, len(data), d.height * d.width)}


def inpainting_video(config: ModelPairConfig) -> tuple[dict, dict]:
    """A video-editing pair's conditioning video and mask at the pair's default shape: (the request's fields,
    the engine's `edit`); empty for other pairs."""
    if not edits_video(config.family):
        return {}, {}
    d = config.defaults
    y, x = np.mgrid[0 : d.height, 0 : d.width]
    video = np.stack(
        [np.stack([x * 3 + 7 * f, y * 4, (x + y) * 2 + 11 * f], axis=-1) % 256 for f in range(d.num_frames)]
    ).astype(np.uint8)
    mask = np.zeros_like(video)
    for f in range(d.num_frames):  # a box a quarter of the frame, moving right
        left = f * (d.width // 2) // d.num_frames
        mask[f, d.height // 4 : 3 * d.height // 4, left : left + d.width // 2] = 255
    fields, frames = {}, {}
    for name, pixels in (("video", video), ("mask", mask)):
        data = encode_mp4(pixels, fps=16)
        frames[name] = load_video(
            data, name, max_bytes=len(data), max_frames=d.num_frames, max_pixels=d.height * d.width
        )
        fields[name] = describe_video(data, frames[name])
    return fields, {"edit": EditInputs(**frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-pair", default="tiny", choices=PAIRS, help="embedded pair")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fixed", default="fixed:0.25", help="the fixed-switch SRDiffusion mode")
    parser.add_argument("--adaptive", default="adaptive", help="the adaptive SRDiffusion mode")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    engine = SRDiffusionEngine(ModelPairConfig.tiny_pair(args.model_pair, num_threads=args.threads))
    n = args.steps
    modes = {
        "large-only": f"fixed:{n}",
        "small-only": "fixed:0",
        f"srdiffusion {args.fixed}": args.fixed,
        f"srdiffusion {args.adaptive}": args.adaptive,
    }
    runs: dict[str, list] = {m: [] for m in modes}
    ref, image = input_image(engine.config)
    edit_fields, edit = inpainting_video(engine.config)
    ref, image = {**ref, **edit_fields}, {**image, **edit}
    engine.generate(GenerationRequest(prompt="warm up", num_inference_steps=2, **ref), **image)
    for rep in range(args.repeats):
        for mode, switch in modes.items():
            req = GenerationRequest(
                prompt="a red fox running through snow", seed=rep, num_inference_steps=n, switch=switch, **ref
            )
            start = time.perf_counter()
            result = engine.generate(req, **image)
            runs[mode].append((time.perf_counter() - start, result))

    def med(mode: str, key: str) -> float:
        return statistics.median(r.timings.get(key, 0.0) for _, r in runs[mode])

    conditioning = med("small-only", "sketch")  # the sketch stage with no steps: image or video encoding
    large_step = (med("large-only", "sketch") - conditioning) / n
    small_step = med("small-only", "render") / n
    overhead = conditioning + statistics.median(
        sum(v for k, v in r.timings.items() if k not in ("sketch", "render")) for _, r in runs["large-only"]
    )
    base = statistics.median(t for t, _ in runs["large-only"])
    rows = []
    for mode in modes:
        total = statistics.median(t for t, _ in runs[mode])
        k = statistics.median(r.switch_step for _, r in runs[mode])
        denoise_bound = n * large_step / (k * large_step + (n - k) * small_step)
        e2e_bound = (overhead + n * large_step) / (overhead + k * large_step + (n - k) * small_step)
        rows.append(
            {
                "mode": mode,
                "median_s": round(total, 4),
                "switch_step_median": k,
                "switch_steps": [r.switch_step for _, r in runs[mode]],
                "speedup_vs_large": round(base / total, 3),
                "bound_denoise": round(denoise_bound, 3),
                "bound_end_to_end": round(e2e_bound, 3),
            }
        )
    report = {
        "command": "python benchmarks/engine_speedup.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"),
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
        "model_pair": engine.config.name,
        "steps": n,
        "repeats": args.repeats,
        "per_step_s": {"large": round(large_step, 5), "small": round(small_step, 5)},
        "step_cost_ratio_small_over_large": round(small_step / large_step, 3),
        "fixed_overhead_s": round(overhead, 4),
        "conditioning_s": round(conditioning, 4),
        "rows": rows,
    }
    print(
        f"per-step: large {large_step * 1000:.1f} ms, small {small_step * 1000:.1f} ms "
        f"(ratio {small_step / large_step:.2f}); encode+conditioning+decode+export {overhead * 1000:.0f} ms "
        f"(conditioning {conditioning * 1000:.0f} ms)"
    )
    print(f"{'mode':<28}{'median s':>10}{'k':>6}{'speedup':>9}{'bound(denoise)':>16}{'bound(e2e)':>12}")
    for r in rows:
        print(
            f"{r['mode']:<28}{r['median_s']:>10.3f}{r['switch_step_median']:>6}{r['speedup_vs_large']:>9.2f}"
            f"{r['bound_denoise']:>16.2f}{r['bound_end_to_end']:>12.2f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
