"""A burst of requests scales the render pool up on its queued GPU-seconds, then back down.

Deploys deploy/tiny-autoscaling.yaml (render pool autoscaled by srserve's QueueWorkPolicy, min 1,
max 3) on a local Ray cluster, idles a few seconds, submits --requests jobs at once over HTTP and
samples every 0.5 s: the render pool's replicas by state, the job store's queued GPU-seconds of both
pools and the jobs per state. When the jobs are done and the pool is back to its minimum it reads
the policy's decisions and Serve's scaling actions from the Serve controller's log.

    flock /tmp/srserve-heavy.lock python benchmarks/autoscaling_burst.py \\
        --out benchmarks/results/autoscaling_burst_tiny.json
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import requests

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from srserve.serving.config import DeployFile, ServingConfig
from srserve.serving.control.pricing.pool_work import estimate_pool_work
from srserve.serving.control.store.database import open_store
from srserve.serving.control.store.work_snapshot import WorkSnapshot
from srserve.serving.launcher import deploy, ensure_ray

TERMINAL = ("completed", "failed", "cancelled")
DEPLOYMENT = "RenderWorker"


class StoreReader:
    """Each pool's queued work and the job counts, read from the job store as the replicas read them."""

    def __init__(self, serving: ServingConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = open_store(serving.resolved().job_store)

    def read(self) -> tuple[WorkSnapshot, dict[str, int]]:
        jobs = self.loop.run_until_complete(self.store.work_snapshot())
        return jobs, self.loop.run_until_complete(self.store.counts())


def sample(app: str, reader: StoreReader, t0: float) -> dict:
    from ray import serve

    status = serve.status().applications[app].deployments[DEPLOYMENT]
    replicas = {str(getattr(k, "value", k)): v for k, v in status.replica_states.items()}
    jobs, counts = reader.read()
    now = time.time()
    render = estimate_pool_work(jobs, "render", now).as_metrics()
    sketch = estimate_pool_work(jobs, "sketch", now).as_metrics()
    return {
        "t": round(time.time() - t0, 2),
        "render_replicas": replicas,
        "render_running": replicas.get("RUNNING", 0),
        "render_work_s": round(render["srserve_pool_work_s"], 3),
        "render_jobs": int(render["srserve_pool_jobs"]),
        "render_step_s": round(render["srserve_pool_step_s"], 4),
        "sketch_work_s": round(sketch["srserve_pool_work_s"], 3),
        "sketch_jobs": int(sketch["srserve_pool_jobs"]),
        "completed": counts.get("completed", 0),
        "failed": counts.get("failed", 0),
    }


def log_time(line: str) -> float | None:
    """Epoch seconds of a Serve log line (`INFO 2026-11-24 12:44:00,592 controller ...`)."""
    match = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
    if match is None:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000


def controller_lines() -> tuple[list[str], list[str]]:
    """The policy's decisions and Serve's up/down-scaling actions for the render pool, from the controller log."""
    import ray

    logs = ray._private.worker._global_node.get_logs_dir_path()
    decisions, actions = [], []
    for path in sorted(glob.glob(os.path.join(logs, "serve", "controller_*.log"))):
        for line in Path(path).read_text(errors="replace").splitlines():
            if "srserve autoscale" in line and f"deployment={DEPLOYMENT}" in line:
                decisions.append(line.strip())
            elif re.search(rf"(Upscaling|Downscaling) .*{DEPLOYMENT}", line):
                actions.append(line.strip())
    return decisions, actions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="deploy/tiny-autoscaling.yaml")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--switch", default="fixed:2", help="a small sketch share makes the render pool the load")
    parser.add_argument("--idle", type=float, default=4.0, help="seconds sampled before the burst")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--port", type=int, default=8310)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from ray import serve

    spec = DeployFile.from_yaml(args.config)
    spec = spec.model_copy(update={"http_port": args.port, "grpc_port": args.port + 1})
    app = spec.serving.app_name
    ensure_ray(num_cpus=8)
    deploy(spec)
    reader = StoreReader(spec.serving)
    base = f"http://127.0.0.1:{args.port}/v1/videos"
    t0 = time.time()
    samples = []
    while time.time() - t0 < args.idle:
        samples.append(sample(app, reader, t0))
        time.sleep(0.5)
    burst_at = time.time() - t0
    body = {"prompt": "a red fox running through snow", "num_inference_steps": args.steps, "switch": args.switch}
    ids = [requests.post(base, json={**body, "seed": i}, timeout=30).json()["id"] for i in range(args.requests)]
    submitted_s = time.time() - t0 - burst_at
    done_at = None
    min_replicas = spec.serving.render_pool.queue_autoscaling.min_replicas
    while time.time() - t0 < args.timeout:
        s = sample(app, reader, t0)
        samples.append(s)
        if done_at is None and s["completed"] + s["failed"] >= args.requests:
            done_at = s["t"]
        back = s["render_replicas"] == {"RUNNING": min_replicas}
        if done_at is not None and back and any(x["render_running"] > min_replicas for x in samples):
            break
        time.sleep(0.5)
    jobs = [requests.get(f"{base}/{i}", timeout=30).json() for i in ids]
    decisions, actions = controller_lines()
    serve.shutdown()

    def after_burst(lines: list[str], needle: str) -> float | None:
        times = [log_time(line) for line in lines if needle in line]
        times = [t - t0 - burst_at for t in times if t is not None and t >= t0 + burst_at]
        return round(min(times), 2) if times else None

    peak = max(samples, key=lambda x: x["render_running"])
    first_up = next((x["t"] for x in samples if x["render_running"] > min_replicas), None)
    back_down = next(
        (x["t"] for x in samples if done_at is not None and x["t"] >= done_at and x["render_running"] == min_replicas),
        None,
    )

    def rel(t: float | None, origin: float | None) -> float | None:
        return None if t is None or origin is None else round(t - origin, 2)

    summary = {
        "requests": args.requests,
        "completed": sum(j["status"] == "completed" for j in jobs),
        "burst_submitted_in_s": round(submitted_s, 2),
        "peak_render_queue_gpu_s": max(x["render_work_s"] for x in samples),
        "peak_render_queue_jobs": max(x["render_jobs"] for x in samples),
        "peak_render_replicas_running": peak["render_running"],
        "first_scale_up_decision_after_burst_s": after_burst(decisions, "decision=scale_up"),
        "first_serve_upscale_after_burst_s": after_burst(actions, "Upscaling"),
        "first_extra_replica_running_after_burst_s": rel(first_up, burst_at),
        "all_jobs_done_after_burst_s": rel(done_at, burst_at),
        "first_scale_down_decision_after_burst_s": after_burst(decisions, "decision=scale_down"),
        "serve_downscale_after_burst_s": after_burst(actions, "Downscaling"),
        "back_to_min_replicas_after_burst_s": rel(back_down, burst_at),
        "policy_decisions_logged": len(decisions),
        "serve_scaling_actions_logged": len(actions),
    }
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only, torch threads 1 per replica",
        "config": args.config,
        "render_pool_autoscaling": spec.serving.render_pool.queue_autoscaling.model_dump(),
        "request": body,
        "summary": summary,
        "policy_decisions": decisions,
        "serve_scaling_actions": actions,
        "samples": samples,
    }
    print(json.dumps(summary, indent=2))
    for line in decisions + actions:
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
