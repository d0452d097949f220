"""Admission through the HTTP front door of the tiny deployment, with 1 and 2 ingress replicas.

`srserve serve deploy/tiny.yaml` (a local Ray cluster, the embedded PostgreSQL, under a temporary
SRSERVE_HOME) with the pools' backlogs raised so that nothing is refused, then REQUESTS concurrent
POST /v1/videos from THREADS client threads: the admitted rate and each POST's p50 / p99, measured from
outside. The pools start computing the admitted jobs meanwhile (as they would), so the ingress shares the
machine with them; every job is cancelled before the next run. The store-only figures (no Ray):
benchmarks/control_plane_scale.py.

    python benchmarks/front_door_admission.py --out benchmarks/results/front_door_admission.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

from srserve.loadgen.serve_process import serve_process

ROOT = Path(__file__).resolve().parents[1]
BODY = {"prompt": "a fox at the front door", "num_inference_steps": 2, "switch": "fixed:1"}


def _spec(ingress_replicas: int, backlog: int) -> dict:
    spec = yaml.safe_load((ROOT / "deploy" / "tiny.yaml").read_text())
    args = spec["applications"][0]["args"]
    for pool in ("sketch_pool", "render_pool"):
        args[pool]["max_backlog"] = backlog
    args["ingress"]["num_replicas"] = ingress_replicas
    return spec


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _post(base: str) -> tuple[float, int, str | None]:
    start = time.perf_counter()
    r = requests.post(base + "/v1/videos", json=BODY, timeout=120)
    return time.perf_counter() - start, r.status_code, r.json().get("id") if r.status_code == 200 else None


def run(ingress_replicas: int, requests_n: int, threads: int, num_cpus: int) -> dict:
    spec = _spec(ingress_replicas, backlog=requests_n + 100)
    with serve_process(spec, num_cpus, "srserve-frontdoor-", ready_timeout_s=600, stop_timeout_s=180) as served:
        base = served.base
        for _ in range(3):  # warm every ingress replica's store connections and code paths
            _post(base)
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(lambda _: _post(base), range(requests_n)))
        elapsed = time.perf_counter() - start
        times = [t for t, status, _ in results if status == 200]
        refused = {str(s): sum(1 for _, st, _ in results if st == s) for s in {st for _, st, _ in results if st != 200}}
        with ThreadPoolExecutor(threads) as pool:  # nothing left to drain before the next run
            list(
                pool.map(
                    lambda j: requests.post(f"{base}/v1/videos/{j}/cancel", timeout=120), (j for *_, j in results if j)
                )
            )
        return {
            "ingress_replicas": ingress_replicas,
            "requests": requests_n,
            "threads": threads,
            "admitted": len(times),
            "refused": refused,
            "per_s": round(len(times) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(times), 1),
            "p99_ms": round(1000 * _percentile(times, 0.99), 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2", help="ingress replica counts, comma-separated")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs = []
    for n in (int(v) for v in args.replicas.split(",")):
        runs.append(run(n, args.requests, args.threads, args.num_cpus))
        print(json.dumps(runs[-1]), flush=True)
    out = {
        "benchmark": "front_door_admission",
        "command": "python benchmarks/front_door_admission.py " + " ".join(sys.argv[1:]),
        "deployment": "deploy/tiny.yaml, pools' max_backlog raised; 1 sketch + 1 render replica computing meanwhile",
        "runs": runs,
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
