"""Operations on a running local deployment: Prometheus metrics scraped from the node's export port
(names and values checked against the jobs that ran), JSON job logs, GPU telemetry without NVML,
and the queue-work autoscaling policy running in the Serve controller on the replicas' reports."""

from __future__ import annotations

import glob
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from srserve.serving.config import PoolConfig, ServingConfig
from srserve.serving.ops.metrics import BYTES_BUCKETS
from tests.serving_helpers import get, post, wait_state

pytestmark = pytest.mark.slow

APP = "metricsapp"
# Gauges set by the ingress (from the job store) and the workers (GPU telemetry).
GAUGES = {
    "ray_srserve_jobs",
    "ray_srserve_pool_queue_jobs",
    "ray_srserve_pool_queue_gpu_seconds",
    "ray_srserve_pool_step_seconds",
    "ray_srserve_ingress_backlog_jobs",
    "ray_srserve_gpu_telemetry_available",
    "ray_srserve_tenant_jobs",
    "ray_srserve_tenant_queue_gpu_seconds",
}


def scrape(port: int, application: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """ray_srserve_* samples of one application: name -> [(labels, value)]."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_srserve_") and s.labels.get("application") == application:
                out[s.name].append((s.labels, s.value))
    return out


def value(samples, name: str, le: float | None = None, **labels: str) -> float:
    """Sum over the series of `name` whose labels include `labels` (e.g. over replicas); `le` picks a
    histogram bucket by its upper edge (compared as a number: large edges are written 1.6e+07)."""
    return sum(
        v
        for lab, v in samples.get(name, [])
        if all(lab.get(k) == x for k, x in labels.items()) and (le is None or float(lab["le"]) == le)
    )


def test_metrics_logs_telemetry_and_autoscaling_on_a_running_deployment(serving, metrics_port, tiny_config) -> None:
    import ray
    from ray import serve

    from srserve.serving.app import build_app

    config = ServingConfig(
        app_name=APP,
        model=tiny_config.model_copy(update={"num_threads": 1}),
        sketch_pool=PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 0.25}),
        render_pool=PoolConfig(
            ray_actor_options={"num_cpus": 0.25},
            queue_autoscaling={
                "min_replicas": 1,
                "max_replicas": 1,
                "metrics_interval_s": 0.5,
                "look_back_period_s": 2,
            },
        ),
    )
    serve.run(build_app(config), name=APP, route_prefix=f"/{APP}", logging_config={"encoding": "JSON"})
    base = f"{serving.http}/{APP}"
    try:
        done = []
        for seed in (1, 2):
            body = {"prompt": "a heron", "num_inference_steps": 8, "switch": "fixed:3", "seed": seed}
            job = post(base, "/v1/videos", json=body).json()
            done.append(wait_state(base, job["id"], timeout_s=180))
        assert [j["status"] for j in done] == ["completed", "completed"], done
        long = post(base, "/v1/videos", json={"prompt": "stop me", "num_inference_steps": 200, "switch": "fixed:150"})
        long_id = long.json()["id"]
        wait_state(base, long_id, ("sketching",), timeout_s=120, until=lambda j: j["srserve"]["step"] >= 1)
        post(base, f"/v1/videos/{long_id}/cancel")
        assert wait_state(base, long_id, timeout_s=120)["srserve"]["state"] == "cancelled"

        # Ray's metrics agent exports every few seconds: wait for the final-state counters.
        deadline = time.monotonic() + 90
        while True:
            m = scrape(metrics_port, APP)
            finished = (
                value(m, "ray_srserve_jobs_total", state="completed"),
                value(m, "ray_srserve_jobs_total", state="cancelled"),
            )
            parsed = value(m, "ray_srserve_handoff_codec_seconds_count", op="parse")
            # The gauges are the store's board, refreshed every BOARD_GAUGE_INTERVAL_S and exported after
            # that: they can lag the counters by an export (a process's first export of a gauge too).
            board = (
                value(m, "ray_srserve_jobs", state="completed"),
                value(m, "ray_srserve_tenant_jobs", tenant="default", state="completed"),
            )
            if finished == (2.0, 1.0) and parsed == 2 and set(m) >= GAUGES and board == (2.0, 2.0):
                break
            assert time.monotonic() < deadline, f"metrics not exported: {finished} {board} {sorted(GAUGES - set(m))}"
            time.sleep(1)

        # Per-stage latency: both completed jobs went through every stage; the cancelled one stopped in its sketch.
        for stage in ("sketch", "handoff", "render", "decode"):
            assert value(m, "ray_srserve_stage_seconds_count", stage=stage) == 2, stage
        assert value(m, "ray_srserve_stage_seconds_count", stage="queue") == 3
        assert value(m, "ray_srserve_job_seconds_count", state="completed") == 2
        assert value(m, "ray_srserve_job_seconds_count", state="cancelled") == 1
        assert value(m, "ray_srserve_stage_seconds_bucket", stage="render", le=float("inf")) == 2
        # Switch step: two jobs switched at step 3 (half-integer bucket edges keep Ray's midpoint sum exact).
        assert value(m, "ray_srserve_switch_step_count") == 2 and value(m, "ray_srserve_switch_step_sum") == 6
        assert value(m, "ray_srserve_switch_step_bucket", le=3.5) == 2
        assert value(m, "ray_srserve_switch_step_bucket", le=2.5) == 0
        # Handoff bytes: both jobs' own sizes fall in the buckets counted (Ray exports `_sum` from midpoints).
        sizes = [j["srserve"]["handoff_bytes"] for j in done]
        edges = [float(e) for e in BYTES_BUCKETS]
        upper = min(e for e in edges if e >= max(sizes))
        lower = max([e for e in edges if e < min(sizes)], default=None)
        assert value(m, "ray_srserve_handoff_bytes_bucket", le=upper) == 2
        if lower is not None:
            assert value(m, "ray_srserve_handoff_bytes_bucket", le=lower) == 0
        assert value(m, "ray_srserve_handoff_seconds_count") == 2
        assert value(m, "ray_srserve_handoff_codec_seconds_count", op="serialize") == 2
        assert value(m, "ray_srserve_step_seconds_count", pool="sketch") == 2
        assert value(m, "ray_srserve_step_seconds_count", pool="render") == 2
        # Gauges: per-state jobs, each pool's queue (empty again), the ingress backlog, GPU telemetry.
        assert value(m, "ray_srserve_jobs", state="completed") == 2
        # The open deployment's one tenant holds every job, and all of each pool's queued work.
        assert value(m, "ray_srserve_tenant_jobs", tenant="default", state="completed") == 2
        for pool in ("sketch", "render"):
            assert value(m, "ray_srserve_tenant_queue_gpu_seconds", tenant="default", pool=pool) >= 0
        for pool in ("sketch", "render"):
            assert any(lab["pool"] == pool for lab, _ in m["ray_srserve_pool_queue_jobs"]), pool
            assert value(m, "ray_srserve_pool_queue_gpu_seconds", pool=pool) >= 0
            assert any(lab["pool"] == pool for lab, _ in m["ray_srserve_ingress_backlog_jobs"])
        assert value(m, "ray_srserve_pool_step_seconds", pool="render") > 0
        assert value(m, "ray_srserve_gpu_telemetry_available", pool="render") == 0  # no GPU on these replicas

        # The session app's sketch replica holds a (fake) GPU: NVML is absent here, reported and survived.
        sketch = serve.get_deployment_handle("SketchWorker", app_name=serving.app_name)
        telemetry = sketch.gpu_telemetry.remote().result(timeout_s=30)
        assert telemetry["available"] is False and "NVML" in telemetry["reason"], telemetry

        # ... and its gauge stays exported however old the replica (re-set every 5 s; Ray drops stale gauges).
        def sketch_gauges() -> list[float]:
            samples = scrape(metrics_port, serving.app_name).get("ray_srserve_gpu_telemetry_available", [])
            return [v for labels, v in samples if labels.get("pool") == "sketch"]

        deadline = time.monotonic() + 30
        while not (gauges := sketch_gauges()):
            assert time.monotonic() < deadline, "the session app's GPU telemetry gauge is not exported"
            time.sleep(1)
        assert all(v == 0 for v in gauges), gauges

        # JSON logs: each job's summary line (from the replica that ended it) carries its job_id.
        logs = ray._private.worker._global_node.get_logs_dir_path()
        lines = []
        for path in glob.glob(os.path.join(logs, "serve", f"replica_{APP}_*.log")):
            with open(path) as f:
                lines += [json.loads(line) for line in f if line.startswith("{")]
        finished = {rec["srserve_job_id"]: rec["message"] for rec in lines if "job finished" in rec.get("message", "")}
        for job in done:
            assert "state=completed" in finished[job["id"]]
        assert "state=cancelled" in finished[long_id]

        # The autoscaling policy ran in the controller on the render replicas' queue-of-work reports.
        deadline = time.monotonic() + 30
        while True:
            decisions = [
                line
                for path in glob.glob(os.path.join(logs, "serve", "controller_*.log"))
                for line in Path(path).read_text().splitlines()
                if f"srserve autoscale app={APP} deployment=RenderWorker" in line
            ]
            if any("work_s=-" not in line for line in decisions):
                break
            assert time.monotonic() < deadline, decisions
            time.sleep(1)
        assert get(base, "/health").status_code == 200
    finally:
        serve.delete(APP)
