"""Soak: open-loop Poisson load above capacity for a bounded time, then account for every request.

Checks what a long run must keep true: beyond capacity requests are refused at admission (429),
every accepted request completes, and replica memory and Ray's object store return to where they
were (no leaked handoff objects).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

from srserve.analysis.timeline import job_timeline, pipeline_report

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class MemorySnapshot:
    replica_rss_mib: dict[str, float]
    plasma_mib: float
    plasma_objects: int


@dataclass
class SoakReport:
    capacity_rps: float
    rate_rps: float
    duration_s: float
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    errors: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    memory_before: MemorySnapshot | None = None
    memory_after: MemorySnapshot | None = None
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _wait_all(base: str, ids: list[str], timeout_s: float) -> dict[str, dict]:
    done: dict[str, dict] = {}
    end = time.monotonic() + timeout_s
    while len(done) < len(ids) and time.monotonic() < end:
        for job_id in ids:
            if job_id not in done:
                job = requests.get(f"{base}/v1/videos/{job_id}", timeout=30).json()
                if job["srserve"]["state"] in TERMINAL:
                    done[job_id] = job
        time.sleep(0.25)
    return done


def measure_capacity(base: str, body: dict[str, Any], n: int = 6) -> float:
    """Saturated throughput (req/s) of the deployment for this request shape: requests over the
    bottleneck pool's active window (srserve.analysis.timeline)."""
    ids: list[str] = []
    while len(ids) < n:  # keep the admission backlog full: retry refusals shortly
        r = requests.post(f"{base}/v1/videos", json={**body, "seed": len(ids)}, timeout=30)
        if r.status_code == 429:
            time.sleep(0.1)
            continue
        r.raise_for_status()
        ids.append(r.json()["id"])
    jobs = _wait_all(base, ids, 600)
    return pipeline_report([job_timeline(j["srserve"] | {"id": i}) for i, j in jobs.items()]).throughput_rps


def memory_snapshot(app_name: str, gcs_address: str) -> MemorySnapshot:
    from ray import serve
    from ray._private.internal_api import memory_summary

    rss: dict[str, float] = {}
    for deployment in ("SketchWorker", "RenderWorker"):
        handle = serve.get_deployment_handle(deployment, app_name=app_name)
        for _ in range(8):  # reach every replica of a small pool
            stats = handle.stats.remote().result(timeout_s=30)
            rss[f"{deployment}:{stats['replica']}"] = round(stats["rss_bytes"] / 2**20, 1)
    summary = memory_summary(address=gcs_address, stats_only=True)
    match = re.search(r"Plasma memory usage (\d+) MiB, (\d+) objects", summary)
    mib, objects = (float(match.group(1)), int(match.group(2))) if match else (float("nan"), -1)
    return MemorySnapshot(rss, mib, objects)


def run_soak(
    base: str,
    app_name: str,
    gcs_address: str,
    body: dict[str, Any],
    capacity_rps: float,
    overload: float = 1.2,
    duration_s: float = 60.0,
    drain_timeout_s: float = 600.0,
    seed: int = 0,
) -> SoakReport:
    rate = overload * capacity_rps
    report = SoakReport(capacity_rps=capacity_rps, rate_rps=rate, duration_s=duration_s)
    report.memory_before = memory_snapshot(app_name, gcs_address)
    rng = random.Random(seed)
    accepted: list[str] = []
    start = time.monotonic()
    next_at = start
    while True:
        next_at += rng.expovariate(rate)
        if next_at - start > duration_s:
            break
        time.sleep(max(0.0, next_at - time.monotonic()))
        report.sent += 1
        try:
            r = requests.post(f"{base}/v1/videos", json={**body, "seed": report.sent}, timeout=30)
        except requests.RequestException as exc:
            report.errors += 1
            report.failures.append(f"send: {exc}")
            continue
        if r.status_code == 200:
            accepted.append(r.json()["id"])
        elif r.status_code == 429:
            report.refused += 1
        else:
            report.errors += 1
            report.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
    report.accepted = len(accepted)
    done = _wait_all(base, accepted, drain_timeout_s)
    report.completed = sum(1 for j in done.values() if j["status"] == "completed")
    report.failed = len(done) - report.completed
    report.failures += [f"{i}: {j.get('error')}" for i, j in done.items() if j["status"] != "completed"]
    report.lost = len(accepted) - len(done)
    time.sleep(2.0)  # let the last handoff references drop
    report.memory_after = memory_snapshot(app_name, gcs_address)
    return report
