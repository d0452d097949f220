"""Planner predictions next to measured runs on this machine (tiny pair, local Ray cluster).

For each case (a cluster layout, a request class and a load): deploy it; profile it (requests one
at a time at switch steps 0, N/2, N; per-step costs fitted over k, as `srserve profile deployment`
does); send the load `--repeats` times (Poisson or closed loop; seeds 0, 1, ...: the same arrival
spec, mix and seed the simulation replays); simulate those request sequences from the profile;
compare the mean throughput and the p99 (and p90) over all the runs' requests.
The profile is measured just before each load because other processes on this shared 2-core
machine change its speed from minute to minute; an up-front profile's predictions are recorded
beside them.

The host has 2 cores and every replica runs one torch thread; the simulator models the cores as
shared by busy replicas (processor sharing). Ray workers run at normal priority here
(RAY_worker_niceness=0) so that other users' processes do not starve the measured replicas.

    flock /tmp/srserve-heavy.lock python benchmarks/planner_validation.py \
        --out benchmarks/results/planner_validation_tiny.json
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
os.environ.setdefault("RAY_worker_niceness", "0")

from srserve.engine import ModelPairConfig
from srserve.loadgen.calibrate import profile_deployment, run_case
from srserve.loadgen.plots import latency_cdf
from srserve.planner.measure import CPU_KIND
from srserve.planner.profile import Profile
from srserve.planner.simulator import ClusterLayout, PoolSpec
from srserve.planner.validate import ValidationCase
from srserve.serving.launcher import ensure_ray
from srserve.workload.arrivals import ClosedLoop, PoissonArrivals
from srserve.workload.mix import RequestMix
from srserve.workload.report import finite_json


def disaggregated(s: int, r: int) -> ClusterLayout:
    return ClusterLayout(
        layout="disaggregated", sketch=PoolSpec(kind=CPU_KIND, replicas=s), render=PoolSpec(kind=CPU_KIND, replicas=r)
    )


def colocated(n: int) -> ClusterLayout:
    return ClusterLayout(layout="colocated", colocated=PoolSpec(kind=CPU_KIND, replicas=n))


def default_cases(steps: int, requests: int) -> list[ValidationCase]:
    def mix(k: int) -> RequestMix:
        return RequestMix.single(num_inference_steps=steps, switch=f"fixed:{k}", width=64, height=64, num_frames=17)

    q = steps // 4
    return [
        ValidationCase(
            name="1s+1r poisson",
            cluster=disaggregated(1, 1),
            arrival=PoissonArrivals(rate=1.0),
            mix=mix(q),
            requests=requests,
        ),
        ValidationCase(
            name="2s+1r poisson, sketch-heavy",
            cluster=disaggregated(2, 1),
            arrival=PoissonArrivals(rate=0.9),
            mix=mix(3 * q),
            requests=requests,
        ),
        ValidationCase(
            name="1s+2r poisson, render-heavy",
            cluster=disaggregated(1, 2),
            arrival=PoissonArrivals(rate=1.2),
            mix=mix(1),
            requests=requests,
        ),
        ValidationCase(
            name="colocated 2 poisson",
            cluster=colocated(2),
            arrival=PoissonArrivals(rate=1.0),
            mix=mix(q),
            requests=requests,
        ),
        ValidationCase(
            name="1s+1r saturated",
            cluster=disaggregated(1, 1),
            arrival=ClosedLoop(concurrency=6),
            mix=mix(q),
            requests=requests // 2,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, default=None, help="up-front profile (default: measure one)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--requests", type=int, default=60, help="requests per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case (seeds 0, 1, ...); p99 over all")
    parser.add_argument("--reps", type=int, default=3, help="profiling repetitions per switch step")
    parser.add_argument("--num-cpus", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    ensure_ray(num_cpus=args.num_cpus)
    model = ModelPairConfig.tiny(num_threads=1)
    if args.profile:
        upfront = Profile.read(args.profile)
    else:
        upfront = profile_deployment(model, 64, 64, 17, args.steps, args.reps)
    load_before = os.getloadavg()
    rows, cdfs = [], {}
    for case in default_cases(args.steps, args.requests):
        row, measured, predicted = run_case(case, model, 8311, 9311, not args.no_progress, upfront, args.repeats)
        rows.append(row)
        cdfs[f"{case.name} measured"] = [r for run in measured for r in run]
        cdfs[f"{case.name} predicted"] = [r for run in predicted for r in run]
        print(
            f"{case.name:<30} throughput {row['measured_throughput_rps']:.3f} vs {row['predicted_throughput_rps']:.3f}"
            f" ({100 * row['throughput_error']:+.1f}%)  p99 {row['measured_p99_s']:.2f}s vs "
            f"{row['predicted_p99_s']:.2f}s ({100 * row['p99_error']:+.1f}%)",
            flush=True,
        )
    table = [
        f"{'case':<30}{'cluster':<46}{'thr meas':>9}{'thr pred':>9}{'err':>7}{'p99 meas':>9}{'p99 pred':>9}{'err':>7}"
        f"{'p90 meas':>9}{'p90 pred':>9}{'err':>7}"
    ] + [
        f"{r['case']:<30}{r['cluster']:<46}{r['measured_throughput_rps']:>9.3f}{r['predicted_throughput_rps']:>9.3f}"
        f"{100 * r['throughput_error']:>+6.1f}%{r['measured_p99_s']:>9.2f}{r['predicted_p99_s']:>9.2f}"
        f"{100 * r['p99_error']:>+6.1f}%{r['measured_p90_s']:>9.2f}{r['predicted_p90_s']:>9.2f}"
        f"{100 * r['p90_error']:>+6.1f}%"
        for r in rows
    ]
    print("\n".join(table))
    if args.out:
        report = {
            "command": "python " + shlex.join(sys.argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1 per replica",
            "load_average_before_cases": load_before,
            "load_average_after_cases": os.getloadavg(),
            "upfront_profile": upfront.model_dump(mode="json"),
            "rows": rows,
            "table": table,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(finite_json(report), indent=2) + "\n")
        png = args.out.with_suffix("").as_posix() + "_latency_cdf.png"
        latency_cdf(cdfs, png, "planner: measured (solid) vs predicted (dashed)")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
