"""CPU time of a local Ray cluster's processes, split into model replicas and everything else.

On a CPU-only host the replicas share the cores with the ingress, the job store, Serve's proxy
and controller, Ray's own processes and the load generator. Measuring how much CPU those take
(idle, and per busy replica) and how many cores a busy replica really uses lets the
simulator share the cores the way the host does. A local cluster started by `ray.init` is made
of descendants of the driver process, so the driver's process tree is the cluster.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

REPLICA_MARKERS = (":SketchWorker", ":RenderWorker", ":ColocatedWorker", ":TextEncoderWorker")


def _cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system  # children are walked separately


def _is_replica(proc: psutil.Process) -> bool:
    try:
        title = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(m in title for m in REPLICA_MARKERS)


@dataclass
class CpuSnapshot:
    wall: float
    replica: dict[int, float]
    other: dict[int, float]


def snapshot(root_pid: int | None = None) -> CpuSnapshot:
    """CPU seconds of every process in the driver's tree, by pid, split replica / other."""
    root = psutil.Process(root_pid or os.getpid())
    replica: dict[int, float] = {}
    other: dict[int, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            cpu = _cpu_seconds(proc)
            (replica if _is_replica(proc) else other)[proc.pid] = cpu
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return CpuSnapshot(time.monotonic(), replica, other)


def used(before: CpuSnapshot, after: CpuSnapshot) -> tuple[float, float, float]:
    """(replica CPU seconds, other CPU seconds, wall seconds) between two snapshots.

    Processes that appeared in between count from zero; ones that ended are dropped."""

    def delta(a: dict[int, float], b: dict[int, float]) -> float:
        return sum(max(0.0, cpu - a.get(pid, 0.0)) for pid, cpu in b.items())

    return delta(before.replica, after.replica), delta(before.other, after.other), after.wall - before.wall


def idle_background(seconds: float = 2.0) -> float:
    """Cores the cluster's non-replica processes use while no request is in flight."""
    a = snapshot()
    time.sleep(seconds)
    _, other, wall = used(a, snapshot())
    return other / wall
