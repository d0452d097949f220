"""Side-by-side in one run: large-only, small-only, SRDiffusion colocated, SRDiffusion disaggregated.

Same tiny pair, same machine, same load, same device budget (replicas, one torch thread each).
See srserve/loadgen/compare.py for what each variant is and how the SLO is set.

    flock /tmp/srserve-heavy.lock python benchmarks/compare_layouts.py \
        --out benchmarks/results/compare_layouts_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Measured replicas at normal priority, so other users of this shared machine do not starve them.
os.environ.setdefault("RAY_worker_niceness", "0")

from srserve.engine import ModelPairConfig
from srserve.loadgen.compare import CompareSettings, default_variants, format_table, run_all, score
from srserve.loadgen.plots import latency_cdf, stage_timeline
from srserve.serving.launcher import ensure_ray
from srserve.workload.report import finite_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=2, help="replicas per variant (devices)")
    parser.add_argument("--sketch-replicas", type=int, default=None, help="disaggregated split (default budget/2)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--switch", default="fixed:5")
    parser.add_argument("--rate", type=float, default=0.5, help="open-loop Poisson rate, the same for every variant")
    parser.add_argument("--requests", type=int, default=16, help="Poisson requests per variant per round")
    parser.add_argument("--saturation-requests", type=int, default=12, help="per variant per round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--unloaded-runs", type=int, default=2, help="per round")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin passes over the variants")
    parser.add_argument("--slo-scale", type=float, default=2.0)
    parser.add_argument("--api", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--num-cpus", type=int, default=16, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    settings = CompareSettings(
        steps=args.steps,
        rate=args.rate,
        requests=args.requests,
        saturation_requests=args.saturation_requests,
        saturation_concurrency=args.concurrency,
        unloaded_runs=args.unloaded_runs,
        slo_scale=args.slo_scale,
        api=args.api,
        rounds=args.rounds,
    )
    variants = default_variants(args.budget, args.steps, args.switch, args.sketch_replicas)
    ensure_ray(num_cpus=args.num_cpus)
    model = ModelPairConfig.tiny(num_threads=1)
    results = run_all(variants, settings, model, progress=not args.no_progress)
    scored = score(results, settings)
    print(format_table(scored))
    if args.out:
        report = {
            "command": "python " + shlex.join(sys.argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1 per replica",
            "settings": settings.model_dump(),
            "note": (
                "ratios are against large-only, all measured in this one run; speedup = unloaded latency ratio; "
                "x large = saturation throughput ratio (closed loop); p99/large = p99 under the same Poisson load"
            ),
            **scored,
            "table": format_table(scored).splitlines(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(finite_json(report), indent=2) + "\n")
        stem = args.out.with_suffix("")
        latency_cdf(
            {r["variant"].name: [rec for run in r["loaded"] for rec in run] for r in results},
            f"{stem}_latency_cdf.png",
            f"latency CDF at {args.rate} req/s (Poisson)",
        )
        for r in results:
            name = r["variant"].name
            stage_timeline(r["loaded"][-1], f"{stem}_timeline_{name}.png", f"{name}: timeline (last round)")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
