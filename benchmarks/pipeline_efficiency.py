"""Pipeline efficiency of 1 sketch + 1 render replica under saturation: how busy the bottleneck pool is kept.

Deploys the tiny pair on a local Ray cluster, submits N requests at once over HTTP, and reads
each request's stage timestamps from the job store. The busy intervals are measured inside the
replicas (encode+sketch on the sketch replica, render+decode+export on the render replica). The
bottleneck is the pool with the most busy time per replica; efficiency is its busy fraction over
its active window (first busy start to last busy end), equal to its throughput over that window
divided by the capacity its busy time per request allows, and never above 1
(srserve.analysis.timeline). Jobs wait in the job store; the queue hands each replica min(its
max_ongoing_requests, 2) jobs at once. It runs the default (max_ongoing_requests=4: two, so the next
job waits inside the replica) and, for comparison, max_ongoing_requests=1 (one: the next job is
handed over only when the current one's call has returned).

    python benchmarks/pipeline_efficiency.py --out benchmarks/results/pipeline_efficiency_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import requests

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from srserve.analysis.timeline import gantt, job_timeline, pipeline_report
from srserve.engine import ModelPairConfig
from srserve.serving.config import DeployFile, PoolConfig, ServingConfig
from srserve.serving.launcher import deploy, embedded_database, ensure_ray


def run_variant(name: str, max_ongoing: int, args: argparse.Namespace) -> dict:
    from ray import serve

    pool = {
        "num_replicas": 1,
        "max_ongoing_requests": max_ongoing,
        "max_backlog": args.requests + 8,
        "ray_actor_options": {"num_cpus": 1},
    }
    config = ServingConfig(
        app_name="bench",
        model=ModelPairConfig.tiny(num_threads=1),
        sketch_pool=PoolConfig(**pool),
        render_pool=PoolConfig(**pool),
    )
    spec = DeployFile(http_port=args.port, grpc_port=args.port + 1, serving=config)
    deploy(spec)
    base = f"http://127.0.0.1:{args.port}/v1/videos"
    body = {"prompt": "a red fox running through snow", "num_inference_steps": args.steps, "switch": args.switch}

    def run_batch(n: int) -> list[dict]:
        ids = [requests.post(base, json={**body, "seed": i}, timeout=30).json()["id"] for i in range(n)]
        jobs = []
        for job_id in ids:
            while True:
                job = requests.get(f"{base}/{job_id}", timeout=30).json()
                if job["srserve"]["state"] in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.2)
            if job["status"] != "completed":
                raise RuntimeError(f"{job_id}: {job}")
            jobs.append(job["srserve"] | {"id": job_id})
        return jobs

    run_batch(2)  # warm-up
    jobs = [job_timeline(j) for j in run_batch(args.requests)]
    report = pipeline_report(jobs, {"sketch": 1, "render": 1})
    chart = gantt(jobs)
    serve.delete("bench")
    print(f"\n== {name} (max_ongoing_requests={max_ongoing})\n{chart}")
    print(
        f"T_sketch {report.t_sketch_s:.3f}s  T_render {report.t_render_s:.3f}s  bottleneck {report.bottleneck}: "
        f"throughput {report.throughput_rps:.3f} req/s of capacity {report.capacity_rps:.3f} req/s over its "
        f"{report.window_s:.1f}s window  efficiency (bottleneck busy fraction) {report.bottleneck_busy_fraction:.3f}"
    )
    return {"variant": name, "max_ongoing_requests": max_ongoing, **report.as_dict(), "gantt": chart.splitlines()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--switch", default="fixed:5")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    database = embedded_database(ServingConfig(app_name="bench"))
    started_db = database is not None and not database.running()  # ours to stop at the end
    ensure_ray(num_cpus=8)
    rows = [run_variant("queued in replica", 4, args), run_variant("no local queue", 1, args)]
    report = {
        "command": f"python benchmarks/pipeline_efficiency.py --requests {args.requests} --steps {args.steps} "
        f"--switch {args.switch}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1 per replica",
        "note": "bottleneck_busy_fraction (the pipeline efficiency, <= 1): the bottleneck pool's busy replica-seconds "
        "over replicas x its active window = throughput_rps / capacity_rps; busy intervals measured inside replicas",
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    if started_db:
        database.stop()


if __name__ == "__main__":
    main()
