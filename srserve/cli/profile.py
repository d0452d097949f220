"""`srserve profile`: measure the stage profile the planner reads.

srserve profile deployment --steps 12 --out profile_tiny.json      # the tiny pair, deployed locally
srserve profile engine --steps 12 --out profile_engine.json        # the tiny pair in-process
srserve profile gpu --preset wan2.1 --out profile_h100.json        # real-size Wan2.1 on CUDA
srserve profile gpu --preset tiny --device cpu --out /tmp/p.json   # the same code, scaled down, on a CPU
"""

from __future__ import annotations

import argparse
import os
import sys

from srserve.cli.progress import quiet_loading_bars

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure per-stage costs (deployment, engine or real-size GPU) for the planner")
    kinds = p.add_subparsers(dest="what", required=True)
    for name, text in (
        ("deployment", "the tiny pair on a local deployment (1 sketch + 1 render, then 1 colocated replica)"),
        ("engine", "the tiny pair in-process (no serving overheads)"),
    ):
        q = kinds.add_parser(name, help=text)
        q.add_argument("--size", default="64x64", help="WIDTHxHEIGHT")
        q.add_argument("--frames", type=int, default=17)
        q.add_argument("--steps", type=int, default=20)
        q.add_argument("--reps", type=int, default=3)
        q.add_argument("--out", required=True)
        if name == "deployment":
            q.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray cluster")
            q.add_argument("--host-cores", type=float, default=None, help="cores replicas share (default: this host)")
        q.set_defaults(func=run)
    g = kinds.add_parser("gpu", help="real-size Wan2.1 transformers, VAE and umT5 with random weights (CUDA)")
    g.add_argument("--preset", choices=["wan2.1", "tiny"], default="wan2.1")
    g.add_argument("--device", default="cuda")
    g.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    g.add_argument("--vae-dtype", choices=["bfloat16", "float16", "float32"], default="float32")
    g.add_argument("--shapes", default=None, help="comma-separated shape names (480p,720p); default all")
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--iters", type=int, default=5)
    g.add_argument("--cfg", choices=["sequential", "batched"], default="sequential", help="CFG mode in step costs")
    g.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: from the device name)")
    g.add_argument("--out", required=True)
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_loading_bars()
    if args.what == "gpu":
        import torch

        from srserve.profiling.gpu_stages import run_gpu_profile
        from srserve.profiling.wan_sizes import PRESETS

        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print(
                "error: --device cuda but no CUDA device is available (use --preset tiny --device cpu)", file=sys.stderr
            )
            return 2
        profile = run_gpu_profile(
            PRESETS[args.preset],
            device,
            dtype=getattr(torch, args.dtype),
            vae_dtype=getattr(torch, args.vae_dtype),
            warmup=args.warmup,
            iters=args.iters,
            shapes=args.shapes.split(",") if args.shapes else None,
            cfg_in_profile=args.cfg,
            peak_tflops=args.peak_tflops,
        )
    else:
        from srserve.engine import ModelPairConfig

        width, height = (int(v) for v in args.size.lower().split("x"))
        model = ModelPairConfig.tiny(num_threads=1)
        if args.what == "engine":
            from srserve.planner.measure import profile_engine

            profile = profile_engine(model, width, height, args.frames, args.steps, args.reps)
        else:
            from srserve.loadgen.calibrate import profile_deployment
            from srserve.serving.launcher import ensure_ray

            os.environ.setdefault("RAY_worker_niceness", "0")  # measured replicas at normal priority
            ensure_ray(num_cpus=args.num_cpus)
            profile = profile_deployment(
                model, width, height, args.frames, args.steps, args.reps, host_cores=args.host_cores
            )
    path = profile.write(args.out)
    print(f"wrote {path}")
    return 0
