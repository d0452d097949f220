"""A burst against one srserve deployment with three switch policies, same load: fixed, adaptive
and the load-aware `load` switch. Reports SLO attainment and goodput of each, one run.

It starts `srserve serve` on the embedded tiny pair (1 sketch + 1 render replica, a fresh
SRSERVE_HOME), then runs `srserve bench` three times against it with the same Poisson seed, step
count and absolute SLO, changing only `--switch`. The burst offers more work than the sketch pool
can take at the adaptive step, so the sketch pool is the bottleneck: `load` caps the sketches,
moving steps onto the render pool, down to its floor (20% of the steps by default).

    python benchmarks/load_switch_burst.py --out benchmarks/results/load_switch_burst_tiny.json
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

import yaml

from srserve.loadgen.serve_process import serve_process

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", default="fixed:0.6,adaptive,load")
    parser.add_argument("--arrival", default="poisson:1.0")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--slo", type=float, default=8.0, help="absolute latency SLO (seconds), the same for all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    spec = yaml.safe_load((ROOT / "deploy" / "tiny.yaml").read_text())
    results: dict[str, dict] = {}
    with serve_process(spec, args.num_cpus, "srserve-burst-") as served:
        base, home, env = served.base, served.home, served.env
        for switch in args.switches.split(","):
            out = home / switch.replace(":", "_")
            bench = [
                sys.executable, "-m", "srserve.cli.main", "bench", "--target", base, "--arrival", args.arrival,
                "--requests", str(args.requests), "--steps", str(args.steps), "--switch", switch,
                "--slo", str(args.slo), "--seed", str(args.seed), "--unloaded-runs", "1", "--gpus", "2",
                "--out", str(out), "--no-progress",
            ]  # fmt: skip
            print("$ " + " ".join(bench[2:]), flush=True)
            subprocess.run(bench, env=env, check=False)
            report = json.loads((out / "report.json").read_text())
            s = report["summary"]
            records = report["records"]
            results[switch] = {
                "slo_attainment": s["slo_attainment"],
                "goodput_rps": s["goodput_rps"],
                "throughput_rps": s["throughput_rps"],
                "completed": s["completed"],
                "rejected": s["rejected"],
                "latency_p50_s": s["latency_s"]["p50"],
                "latency_p99_s": s["latency_s"]["p99"],
                "switch_step_mean": s["switch_step"]["mean"],
                "switch_reasons": dict(collections.Counter(r.get("switch_reason") or "-" for r in records)),
            }
    out = {
        "benchmark": "load_switch_burst",
        "command": "python benchmarks/load_switch_burst.py " + " ".join(sys.argv[1:]),
        "deployment": "deploy/tiny.yaml: 1 sketch + 1 render replica (CPU)",
        "arrival": args.arrival,
        "requests": args.requests,
        "steps": args.steps,
        "slo_s": args.slo,
        "seed": args.seed,
        "runs": results,
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
