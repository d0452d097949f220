"""Statistics over request records: percentiles, latency summaries, queueing, utilisation, SLO, goodput.

The planner's simulator emits the same records, so measured and predicted runs are summarised
by the same code.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from pydantic import BaseModel

from srserve.workload.records import RequestRecord


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class Distribution(BaseModel):
    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        xs = list(values)
        if not xs:
            nan = math.nan
            return cls(count=0, mean=nan, p50=nan, p90=nan, p99=nan, min=nan, max=nan)
        return cls(
            count=len(xs),
            mean=sum(xs) / len(xs),
            p50=percentile(xs, 50),
            p90=percentile(xs, 90),
            p99=percentile(xs, 99),
            min=min(xs),
            max=max(xs),
        )


def measurement_window(records: Sequence[RequestRecord]) -> tuple[float, float]:
    """From the first accepted submission to the last completion (server stamps)."""
    starts = [r.timeline["submitted"] for r in records if "submitted" in r.timeline]
    ends = [r.timeline["finished"] for r in records if r.completed and "finished" in r.timeline]
    if not starts or not ends:
        return (0.0, 0.0)
    return min(starts), max(ends)


def merged_busy(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of intervals (a replica's stamps can overlap by a few ms at job boundaries)."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def pool_busy(records: Sequence[RequestRecord]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """pool -> replica -> merged busy intervals."""
    raw: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for pool, replica, a, b in r.busy_intervals():
            raw[pool][replica].append((a, b))
    return {p: {rep: merged_busy(iv) for rep, iv in reps.items()} for p, reps in raw.items()}


def utilisation(
    records: Sequence[RequestRecord],
    replicas_per_pool: dict[str, int] | None = None,
    window: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Busy fraction of each pool over the window (replica count from config, else observed)."""
    t0, t1 = window or measurement_window(records)
    span = t1 - t0
    out: dict[str, float] = {}
    for pool, reps in pool_busy(records).items():
        n = (replicas_per_pool or {}).get(pool) or len(reps)
        busy = sum(max(0.0, min(b, t1) - max(a, t0)) for iv in reps.values() for a, b in iv)
        out[pool] = busy / (n * span) if span > 0 and n else math.nan
    return out


def utilisation_series(
    records: Sequence[RequestRecord], bin_s: float, replicas_per_pool: dict[str, int] | None = None
) -> tuple[list[float], dict[str, list[float]]]:
    """Bin start times (seconds from window start) and each pool's busy fraction per bin."""
    t0, t1 = measurement_window(records)
    nbins = max(1, math.ceil((t1 - t0) / bin_s))
    starts = [i * bin_s for i in range(nbins)]
    series: dict[str, list[float]] = {}
    for pool, reps in pool_busy(records).items():
        n = (replicas_per_pool or {}).get(pool) or len(reps)
        busy = [0.0] * nbins
        for iv in reps.values():
            for a, b in iv:
                a, b = max(a, t0) - t0, min(b, t1) - t0
                i = max(0, int(a // bin_s))
                while i < nbins and i * bin_s < b:
                    lo, hi = i * bin_s, (i + 1) * bin_s
                    busy[i] += max(0.0, min(b, hi) - max(a, lo))
                    i += 1
        series[pool] = [x / (n * bin_s) for x in busy]
    return starts, series


class Summary(BaseModel):
    """What a run achieved; the planner predicts the same fields."""

    requests: int
    completed: int
    failed: int
    rejected: int
    unfinished: int
    window_s: float
    throughput_rps: float
    latency_s: Distribution
    queue_s: dict[str, Distribution]
    utilisation: dict[str, float]
    slo_requests: int
    slo_attainment: float | None
    goodput_rps: float | None
    gpus: float | None
    throughput_per_gpu: float | None
    goodput_per_gpu: float | None
    switch_step: Distribution


def steady_window(records: Sequence[RequestRecord], warmup_fraction: float = 0.2) -> tuple[float, float]:
    """Up to the last arrival, from the later of the arrival that ends the warm-up fraction and the
    first arrival plus the median latency (the pipeline has filled): no empty start, no drain."""
    arrivals = sorted(r.timeline["submitted"] for r in records if "submitted" in r.timeline)
    latencies = [r.latency for r in records if r.latency is not None]
    if len(arrivals) < 2 or not latencies:
        return measurement_window(records)
    start = max(arrivals[int(warmup_fraction * (len(arrivals) - 1))], arrivals[0] + percentile(latencies, 50))
    return min(start, arrivals[-2]), arrivals[-1]


def summarize(
    records: Sequence[RequestRecord],
    gpus: float | None = None,
    replicas_per_pool: dict[str, int] | None = None,
    window: tuple[float, float] | None = None,
) -> Summary:
    """Throughput and goodput are over the measurement window; SLO attainment counts every request
    that had an SLO (failed, rejected and unfinished ones miss it).

    By default the window runs from the first submission to the last completion (a bounded run,
    as measured). With an explicit `window` (e.g. `steady_window`), latency, SLO attainment and
    goodput count the requests submitted inside it (goodput = those that met their SLO over the
    window), and throughput the completions inside it.
    """
    everyone = records  # utilisation counts every job busy inside the window
    if window is not None:
        t0, t1 = window
        finished_inside = sum(1 for r in records if r.completed and t0 <= r.timeline.get("finished", -1.0) <= t1)
        records = [r for r in records if t0 <= r.timeline.get("submitted", r.sent_at) <= t1]
    else:
        t0, t1 = measurement_window(records)
        finished_inside = sum(1 for r in records if r.completed)
    span = t1 - t0
    done = [r for r in records if r.completed]
    queues: dict[str, list[float]] = defaultdict(list)
    for r in done:
        for pool, wait in r.queue_waits().items():
            queues[pool].append(wait)
    with_slo = [r for r in records if r.slo_s is not None]
    met = sum(1 for r in with_slo if r.met_slo)
    throughput = finished_inside / span if span > 0 else math.nan
    goodput = (met / span if span > 0 else math.nan) if with_slo else None
    return Summary(
        requests=len(records),
        completed=len(done),
        failed=sum(1 for r in records if r.status in ("failed", "cancelled", "error")),
        rejected=sum(1 for r in records if r.status == "rejected"),
        unfinished=sum(1 for r in records if r.status in ("pending", "unfinished")),
        window_s=span,
        throughput_rps=throughput,
        latency_s=Distribution.of(r.latency for r in done if r.latency is not None),
        queue_s={pool: Distribution.of(v) for pool, v in sorted(queues.items())},
        utilisation=utilisation(everyone, replicas_per_pool, window),
        slo_requests=len(with_slo),
        slo_attainment=met / len(with_slo) if with_slo else None,
        goodput_rps=goodput,
        gpus=gpus,
        throughput_per_gpu=throughput / gpus if gpus else None,
        goodput_per_gpu=goodput / gpus if gpus and goodput is not None else None,
        switch_step=Distribution.of(float(r.switch_step) for r in done if r.switch_step is not None),
    )
