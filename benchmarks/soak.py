"""Soak the tiny deployment (1 sketch + 1 render replica) at 1.2x its measured capacity.

    python benchmarks/soak.py --minutes 3 --out benchmarks/results/soak_tiny.json

Records sent / accepted / refused / completed / lost and replica RSS plus Ray object-store
usage before and after. Refusals happen at admission (each pool's max_backlog), never later.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray

from srserve.engine import ModelPairConfig
from srserve.loadgen.soak import measure_capacity, run_soak
from srserve.serving.config import DeployFile, PoolConfig, ServingConfig
from srserve.serving.launcher import deploy, ensure_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--overload", type=float, default=1.2)
    parser.add_argument("--backlog", type=int, default=3, help="max_backlog of each pool")
    parser.add_argument("--port", type=int, default=8133)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ensure_ray(num_cpus=8)
    pool = {"num_replicas": 1, "max_backlog": args.backlog, "ray_actor_options": {"num_cpus": 1}}
    config = ServingConfig(
        app_name="soak",
        model=ModelPairConfig.tiny(num_threads=1),
        sketch_pool=PoolConfig(**pool),
        render_pool=PoolConfig(**pool),
    )
    deploy(DeployFile(http_port=args.port, grpc_port=args.port + 1, serving=config))
    base = f"http://127.0.0.1:{args.port}"
    body = {"prompt": "soak", "num_inference_steps": 12, "switch": "fixed:3"}
    capacity = measure_capacity(base, body, n=8)
    report = run_soak(
        base,
        "soak",
        ray.get_runtime_context().gcs_address,
        body,
        capacity,
        overload=args.overload,
        duration_s=args.minutes * 60,
    )
    data = {
        "command": f"python benchmarks/soak.py --minutes {args.minutes} --overload {args.overload} "
        f"--backlog {args.backlog}",
        "request": body,
        **report.as_dict(),
    }
    print(json.dumps(data, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
