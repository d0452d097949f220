"""Cluster-scale planning examples (8 to 256 GPUs, one and two GPU kinds) from the DERIVED Wan2.1
profile (published A100 figures scaled by FLOPs and peak TFLOP/s; not measured on a GPU here).

Per budget: 50 steps, adaptive switch (the profile's implied distribution, mean step ~10), 480p
81 frames, Poisson load at 70% of the analytic capacity of the budget's best candidate, SLO = 2x
the request's unloaded latency on one A100 (2 x ~344 s, the published single-A100 SRDiffusion
time). The planner's best configuration is printed with its predicted goodput and p99, and the
highest rate it sustains at 90% SLO attainment; next to it the same figure for SRDiffusion
colocated on the budget's first kind, and for large-only (14B alone, SLO 2x its own single-A100
latency) colocated on the first kind. Figures are steady-state (warm-up and drain excluded).

    python benchmarks/planner_cluster_examples.py --out benchmarks/results/planner_cluster_examples.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from srserve.planner.profile import Profile
from srserve.planner.search import (
    PlanSpec,
    analytic_capacity,
    enumerate_candidates,
    max_rate,
    plan,
    reference_unloaded,
)
from srserve.planner.simulator import ClusterLayout, PoolSpec
from srserve.workload.arrivals import PoissonArrivals
from srserve.workload.mix import RequestClass, RequestMix
from srserve.workload.plan import SloPolicy
from srserve.workload.report import finite_json

BUDGETS = [
    {"H100": 8},
    {"H100": 32},
    {"H100": 64},
    {"H100": 256},
    {"A100": 64},
    {"H100": 8, "A100": 24},
    {"H100": 16, "L40S": 32},
    {"A100": 32, "A10G": 64},
    {"H100": 64, "L40S": 192},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, default=Path("benchmarks/results/profile_wan21_a100_derived.json"))
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the colocated capacity of the budget")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--slo-scale", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    profile = Profile.read(args.profile)
    defaults = profile.defaults
    srd = RequestMix(classes=[RequestClass(name="srd", switch="adaptive")])
    large_only = RequestMix(classes=[RequestClass(name="large", switch=f"fixed:{defaults.num_inference_steps}")])
    out = []
    for budget in BUDGETS:
        first = next(iter(budget))
        probe = PlanSpec(budget=budget, arrival=PoissonArrivals(rate=1.0), mix=srd)
        best_cap = max(analytic_capacity(profile, c, srd, defaults) for c in enumerate_candidates(profile, probe))
        rate = round(args.load * best_cap, 4)
        spec = PlanSpec(
            budget=budget,
            arrival=PoissonArrivals(rate=rate),
            mix=srd,
            requests=max(args.requests, 20 * sum(budget.values())),  # long enough to reach steady state
            slo=SloPolicy(scale=args.slo_scale),
            slo_reference_kind="A100",
            max_simulated=16,
        )
        start = time.perf_counter()
        results, slo = plan(profile, spec, defaults)
        best = results[0]
        colocated_first = ClusterLayout(layout="colocated", colocated=PoolSpec(kind=first, replicas=budget[first]))
        large_spec = spec.model_copy(update={"mix": large_only, "slo": SloPolicy(scale=args.slo_scale)})
        large_slo = SloPolicy(scale=args.slo_scale, unloaded_s=reference_unloaded(profile, large_spec, defaults))
        rates = {
            "best": max_rate(profile, spec, best.cluster, defaults, slo, iterations=10),
            "srdiffusion_colocated": max_rate(profile, spec, colocated_first, defaults, slo, iterations=10),
            "large_only_colocated": max_rate(profile, large_spec, colocated_first, defaults, large_slo, iterations=10),
        }
        row = {
            "budget": budget,
            "rate_rps": rate,
            "slo_s": {k: v * args.slo_scale for k, v in slo.unloaded_s.items()},
            "large_only_slo_s": {k: v * args.slo_scale for k, v in large_slo.unloaded_s.items()},
            "best": best.row(),
            "top": [e.row() for e in results[:5]],
            "max_rate_at_90pct_slo_rps": rates,
            "search_seconds": time.perf_counter() - start,
        }
        out.append(row)
        b = best.summary
        print(
            f"{budget!s:<28} load {rate:.3f}/s  best: {best.cluster.label():<44} goodput {b.goodput_rps:.3f}/s "
            f"(SLO {100 * b.slo_attainment:.0f}%, p99 {b.latency_s.p99:.0f}s)",
            flush=True,
        )
        print(
            f"{'':<28} max rate at 90% SLO: best {rates['best']:.3f}/s, SRDiffusion colocated "
            f"{budget[first]}x{first} {rates['srdiffusion_colocated']:.3f}/s, large-only colocated "
            f"{rates['large_only_colocated']:.3f}/s",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                finite_json(
                    {
                        "command": "python " + shlex.join(sys.argv),
                        "profile": str(args.profile),
                        "profile_source": profile.source,
                        "note": "predictions from a DERIVED profile (published A100 figures), not GPU measurements",
                        "examples": out,
                    }
                ),
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
