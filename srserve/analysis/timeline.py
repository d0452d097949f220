"""Pipeline efficiency of a disaggregated deployment, from per-request stage stamps (as recorded in
the job store), and a text Gantt chart of the same stamps.

Pipeline efficiency here is the bottleneck pool's busy fraction: the share of its replicas' time,
over the window in which that pool was active, that they spent busy with a request. It says how
well the pipeline kept its slowest stage fed, and it cannot exceed 1 (see `busy_fraction`).

Why not throughput over min(1/T_sketch, 1/T_render) with mean stage times: the means and the
throughput come from different requests and different stretches of time (the first sketch runs
alone, later ones contend for the CPU with renders), so on a loaded machine that ratio can exceed
1 and then says nothing. Here the bound and the throughput come from the same busy intervals in the
same window, and their ratio is the busy fraction exactly.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from srserve.workload.records import RENDER, SKETCH
from srserve.workload.timeline import Timeline

Interval = tuple[float, float]
POOLS = (SKETCH, RENDER)


@dataclass(frozen=True)
class JobTimeline:
    """One job's stamps, with what the report and chart print beside them."""

    job_id: str
    timeline: Timeline
    switch_step: int | None = None
    replicas: Mapping[str, str] = field(default_factory=dict)  # pool -> replica that ran its stage

    def busy(self, pool: str) -> Interval | None:
        """When this job held a replica of `pool` (sketch or render)."""
        return self.timeline.sketch_interval if pool == SKETCH else self.timeline.render_interval


def job_timeline(job: Mapping[str, Any]) -> JobTimeline:
    """From a job summary (Job.summary(), or the `srserve` part of an HTTP video object, with `id` added)."""
    return JobTimeline(
        job_id=job.get("id", ""),
        timeline=Timeline.of(job["timeline"]),
        switch_step=job.get("switch_step"),
        replicas=dict(job.get("replicas") or {}),
    )


def idle_within(intervals: Iterable[Interval], window: Interval) -> float:
    """Seconds of `window` that no interval covers (intervals may overlap; parts outside are ignored).

    Every term added is a difference b - a of two floats with b >= a, so the result is >= 0 exactly,
    not only up to rounding."""
    w0, w1 = window
    idle, covered_to = 0.0, w0
    for a, b in sorted(intervals):
        a, b = max(a, w0), min(b, w1)
        if b <= a:
            continue
        if a > covered_to:
            idle += a - covered_to
        covered_to = max(covered_to, b)
    if w1 > covered_to:
        idle += w1 - covered_to
    return idle


def busy_fraction(by_replica: Mapping[str, Sequence[Interval]], replicas: int, window: Interval) -> float:
    """Share of `replicas` x `window` replica-seconds in which a replica was busy: 1 - idle / (R x W).

    Proof that it lies in [0, 1], for any intervals: let W = w1 - w0 > 0 and R >= the number of
    replicas that have intervals. Replica r's idle time I_r (idle_within) is W minus the measure of
    the union of its intervals inside the window, so 0 <= I_r <= W; a replica with no interval has
    I_r = W. Then 0 <= sum_r I_r <= R W, and 1 - sum_r I_r / (R W) lies in [0, 1]. In floating point
    each I_r is a sum of non-negative differences, so I / (R W) >= 0 and 1 - it <= 1 holds exactly;
    the lower end is clamped at 0 against rounding.

    It is 1 exactly when every replica is busy over the whole window (each replica's intervals,
    clipped to the window, leave no gap): a perfectly packed pipeline stage.
    """
    w0, w1 = window
    if w1 <= w0:
        raise ValueError(f"busy_fraction: empty window {window}")
    if replicas < len(by_replica):
        raise ValueError(f"busy_fraction: {len(by_replica)} replicas have intervals, more than the {replicas} given")
    idle = sum(idle_within(iv, window) for iv in by_replica.values()) + (replicas - len(by_replica)) * (w1 - w0)
    return max(0.0, 1.0 - idle / (replicas * (w1 - w0)))


@dataclass
class PipelineReport:
    requests: int
    t_sketch_s: float  # mean busy seconds per request on a sketch replica
    t_render_s: float  # ... and on a render replica
    bottleneck: str  # the pool with the most busy time per replica
    replicas: int  # of the bottleneck pool
    window_s: float  # the bottleneck pool's active window: its first busy start to its last busy end
    busy_s: float  # replica-seconds the bottleneck pool was busy inside that window
    throughput_rps: float  # requests the bottleneck pool served per second of its window
    capacity_rps: float  # what it would serve if never idle, at the busy seconds per request seen here
    bottleneck_busy_fraction: float  # = busy_s / (replicas x window_s) = throughput / capacity, in [0, 1]
    makespan_s: float
    overlapped_pairs: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _by_pool(jobs: Sequence[JobTimeline]) -> dict[str, dict[str, list[Interval]]]:
    out: dict[str, dict[str, list[Interval]]] = {pool: defaultdict(list) for pool in POOLS}
    for job in jobs:
        for pool in POOLS:
            iv = job.busy(pool)
            if iv is None:
                raise ValueError(f"job {job.job_id or '?'} has no {pool} interval (not completed?)")
            out[pool][job.replicas.get(pool, "")].append(iv)
    return out


def _covered(intervals: Sequence[Interval]) -> float:
    window = (min(a for a, _ in intervals), max(b for _, b in intervals))
    return window[1] - window[0] - idle_within(intervals, window)


def pipeline_report(jobs: Sequence[JobTimeline], replicas_per_pool: Mapping[str, int] | None = None) -> PipelineReport:
    """How busy the bottleneck pool was kept. `replicas_per_pool` gives the deployed replica counts
    (default: the replicas seen in the jobs), so an idle replica counts against the pipeline."""
    if len(jobs) < 2:
        raise ValueError("need at least two completed requests")
    pools = _by_pool(jobs)
    counts = {pool: max((replicas_per_pool or {}).get(pool, 0), len(by_replica)) for pool, by_replica in pools.items()}
    per_replica = {pool: sum(_covered(iv) for iv in pools[pool].values()) / counts[pool] for pool in POOLS}
    bottleneck = max(POOLS, key=lambda pool: per_replica[pool])
    intervals = [iv for ivs in pools[bottleneck].values() for iv in ivs]
    window = (min(a for a, _ in intervals), max(b for _, b in intervals))
    window_s = window[1] - window[0]
    if window_s <= 0:
        raise ValueError("the bottleneck pool was never busy")
    fraction = busy_fraction(pools[bottleneck], counts[bottleneck], window)
    busy_s = fraction * counts[bottleneck] * window_s
    throughput = len(jobs) / window_s
    ordered = sorted(jobs, key=lambda j: j.busy(SKETCH)[0])
    overlapped = sum(1 for a, b in itertools.pairwise(ordered) if b.busy(SKETCH)[0] < a.busy(RENDER)[1])
    submitted = [j.timeline.marks.get("submitted", j.busy(SKETCH)[0]) for j in jobs]
    return PipelineReport(
        requests=len(jobs),
        t_sketch_s=statistics.mean(j.timeline.sketch_busy for j in jobs),
        t_render_s=statistics.mean(j.timeline.render_busy for j in jobs),
        bottleneck=bottleneck,
        replicas=counts[bottleneck],
        window_s=window_s,
        busy_s=busy_s,
        throughput_rps=throughput,
        capacity_rps=throughput / fraction if fraction > 0 else float("inf"),
        bottleneck_busy_fraction=fraction,
        makespan_s=max(j.busy(RENDER)[1] for j in jobs) - min(submitted),
        overlapped_pairs=overlapped,
    )


def gantt(jobs: Sequence[JobTimeline], width: int = 72) -> str:
    """A text chart: one row per request, `s` while a sketch replica holds it, `r` while a render replica does."""
    _by_pool(jobs)  # raises unless every job has both intervals
    t0 = min(j.timeline.marks.get("submitted", j.busy(SKETCH)[0]) for j in jobs)
    t1 = max(j.busy(RENDER)[1] for j in jobs)
    scale = width / max(t1 - t0, 1e-9)
    rows = [f"{'request':<10} {'sketch s':>9} {'render s':>9}  0{'-' * (width - 2)}{t1 - t0:.1f}s"]
    for i, job in enumerate(sorted(jobs, key=lambda j: j.busy(SKETCH)[0])):
        line = [" "] * width
        for pool, ch in ((SKETCH, "s"), (RENDER, "r")):
            start, end = job.busy(pool)
            a = int((start - t0) * scale)
            b = max(a + 1, int((end - t0) * scale))
            for x in range(a, min(b, width)):
                line[x] = ch
        rows.append(f"{i:<10} {job.timeline.sketch_busy:>9.2f} {job.timeline.render_busy:>9.2f}  {''.join(line)}")
    return "\n".join(rows)
