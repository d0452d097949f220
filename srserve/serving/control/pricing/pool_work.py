"""Each pool's queue of work in expected GPU-seconds, computed from the job store's records.

The store knows every job's state, step, step count and switch step, and the stage stamps of
recent jobs give the measured time of one sketch step, one render step, an encode and a decode.
A pool's work is then, over the jobs waiting for or running in it,

    sum(remaining steps in this pool) * measured step time + per-job fixed costs (encode / decode)

which is what its autoscaling policy scales on (srserve.serving.ops.autoscaling), not request counts:
a 50-step 81-frame job and a 4-step preview are not the same load. Plain Python, no Ray.

The pricing takes a list of jobs or the store's WorkSnapshot (control/store/work_snapshot.py: alike unfinished jobs
as one job and a count), which prices the same with rows that do not grow with the waiting jobs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

from srserve.engine.request import stored_switch
from srserve.serving.control.jobs import Job, JobState
from srserve.serving.control.store.work_snapshot import WorkSnapshot
from srserve.workload.timeline import Timeline

Pool = Literal["text", "sketch", "render", "colocated"]
POOLS: tuple[Pool, ...] = ("text", "sketch", "render", "colocated")

# Recent samples per measured quantity (newest jobs first); the median of them is used.
RECENT_SAMPLES = 32

_BEFORE_SKETCH = frozenset({JobState.QUEUED, JobState.ENCODING})
_SKETCH_STATES = _BEFORE_SKETCH | {JobState.SKETCHING}
_RENDER_STATES = frozenset({JobState.HANDED_OFF, JobState.RENDERING, JobState.DECODING})


@dataclass
class StageTimes:
    """Measured durations (seconds); None until a job has shown one."""

    encode_s: float | None = None
    sketch_step_s: float | None = None
    render_step_s: float | None = None
    decode_s: float | None = None
    adaptive_switch_fraction: float | None = None  # observed switch step / steps of adaptive jobs


@dataclass
class PoolWork:
    """What one pool has in front of it; the numbers its replicas report to the autoscaler."""

    pool: str
    jobs: int = 0  # queue depth: jobs waiting for or running in the pool
    remaining_steps: int = 0
    work_s: float = 0.0  # priced work: steps and fixed costs with a measured duration
    unpriced_steps: int = 0  # steps of a stage with no measured step time yet
    incoming_s: float = 0.0  # work still upstream that will reach this pool (render: jobs sketching)
    step_s: float = 0.0  # measured step time of the pool's stage (0 when unknown)

    def as_metrics(self) -> dict[str, float]:
        """Flat numeric dict (Serve's record_autoscaling_stats format)."""
        return {f"srserve_pool_{k}": float(v) for k, v in asdict(self).items() if k != "pool"}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _step_samples(job: Job, t: Timeline, now: float, unit: float, sketch: list[float], render: list[float]) -> None:
    """The job's time per sketch step and per render step (divided by `unit`), where it has shown them."""
    if job.switch_step:  # handed off: the whole sketch is known
        if (d := t.span("sketch")) is not None:
            sketch.append(d / job.switch_step / unit)
    elif job.state == JobState.SKETCHING and job.step > 0 and "sketch_start" in t.marks:
        sketch.append(max(0.0, now - t.marks["sketch_start"]) / job.step / unit)
    if job.switch_step is not None and job.num_steps > job.switch_step:
        if (d := t.span("render")) is not None:
            render.append(d / (job.num_steps - job.switch_step) / unit)
        elif job.state == JobState.RENDERING and job.step > job.switch_step and "render_start" in t.marks:
            render.append(max(0.0, now - t.marks["render_start"]) / (job.step - job.switch_step) / unit)


def measure_stage_times(
    jobs: Iterable[Job] | WorkSnapshot,
    now: float,
    recent: int = RECENT_SAMPLES,
    per: Callable[[Job], float | None] | None = None,
) -> StageTimes:
    """Median stage durations over the newest jobs (in creation order; a snapshot's measured ones); a job
    still in a stage counts by its progress.

    `per`: each job's step times divided by `per(job)` (its size: jobs of different sizes then price one
    unit of work alike); a job it gives None for leaves its steps unmeasured."""
    if isinstance(jobs, WorkSnapshot):
        jobs = jobs.measured
    encode: list[float] = []
    sketch: list[float] = []
    render: list[float] = []
    decode: list[float] = []
    switch_fraction: list[float] = []
    samples = (encode, sketch, render, decode, switch_fraction)
    for job in reversed(list(jobs)):  # the store returns jobs in creation order: newest last
        if all(len(s) >= recent for s in samples):
            break
        t = Timeline.of(job.timeline)
        if (d := t.span("encode")) is not None:
            encode.append(d)
        unit = 1.0 if per is None else per(job)
        if unit is not None:
            _step_samples(job, t, now, unit, sketch, render)
        if job.switch_step is not None and job.num_steps and stored_switch(job.request).kind == "adaptive":
            switch_fraction.append(job.switch_step / job.num_steps)
        if (d := t.span("decode")) is not None:
            decode.append(d)
    return StageTimes(*(_median(s[:recent]) for s in samples))


def expected_sketch_steps(job: Job, adaptive_fraction: float | None) -> int:
    """Sketch steps the job will run: known once handed off, fixed by a fixed switch, else estimated."""
    if job.switch_step is not None:
        return job.switch_step
    n = job.num_steps
    switch = stored_switch(job.request)
    if switch.kind == "fixed":
        return min(switch.fixed_step(n), n)
    lo, hi = switch.bounds(n)
    guess = round(adaptive_fraction * n) if adaptive_fraction is not None else hi  # unmeasured: the bound
    return max(lo, min(guess, hi))


class _Tally:
    """A pool's work, added job by job; `n`: how many alike jobs the one priced stands for."""

    def __init__(self, pool: str) -> None:
        self.work = PoolWork(pool)
        self.n = 1

    def job(self) -> None:
        self.work.jobs += self.n

    def steps(self, count: int, step_s: float | None) -> None:
        count = max(0, count)
        self.work.remaining_steps += count * self.n
        if step_s is None:
            self.work.unpriced_steps += count * self.n
        else:
            self.work.work_s += count * step_s * self.n

    def fixed(self, seconds: float | None) -> None:
        if seconds is not None:
            self.work.work_s += max(0.0, seconds) * self.n

    def incoming(self, seconds: float) -> None:
        self.work.incoming_s += seconds * self.n


def estimate_pool_work(
    jobs: Iterable[Job] | WorkSnapshot,
    pool: str,
    now: float,
    include_encode: bool = True,
    times: StageTimes | None = None,
) -> PoolWork:
    """The queue of work of `pool` (see the module docstring); `include_encode` when its replicas encode."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; known: {', '.join(POOLS)}")
    snapshot = WorkSnapshot.of(jobs)
    times = times or measure_stage_times(snapshot, now)  # finished jobs carry the measurements
    tally = _Tally(pool)
    for job, n in snapshot.groups:  # unfinished jobs only
        tally.n = n
        encoded = "encode_end" in job.timeline
        sketch_total = expected_sketch_steps(job, times.adaptive_switch_fraction)
        if pool == "text":
            if job.state in _BEFORE_SKETCH and not encoded:
                tally.job()
                tally.fixed(times.encode_s)
            continue
        in_sketch = job.state in _SKETCH_STATES
        in_render = job.state in _RENDER_STATES
        if job.state == JobState.SKETCHING:
            sketch_left = max(1, sketch_total - job.step)  # still sketching: at least one step to go
            switch_at = job.step + sketch_left
        else:
            sketch_left = sketch_total if in_sketch else 0
            switch_at = sketch_total
        if job.state in (JobState.RENDERING, JobState.DECODING):
            render_left = max(0, job.num_steps - max(job.step, switch_at))
        else:
            render_left = max(0, job.num_steps - switch_at)
        decode_left = times.decode_s or 0.0
        if job.state == JobState.DECODING and "decode_start" in job.timeline:
            decode_left = max(0.0, decode_left - (now - job.timeline["decode_start"]))
        if pool == "sketch":
            if in_sketch:
                tally.job()
                tally.steps(sketch_left, times.sketch_step_s)
                if include_encode and not encoded:
                    tally.fixed(times.encode_s)
        elif pool == "render":
            if in_render:
                tally.job()
                tally.steps(render_left, times.render_step_s)
                tally.fixed(decode_left)
            elif in_sketch and times.render_step_s is not None:
                tally.incoming(render_left * times.render_step_s + decode_left)
        else:  # colocated: one replica runs every stage of the job
            tally.job()
            tally.steps(sketch_left, times.sketch_step_s)
            if in_sketch and not encoded:
                tally.fixed(times.encode_s)
            tally.steps(render_left, times.render_step_s)
            tally.fixed(decode_left)
    step = times.render_step_s if pool == "render" else times.sketch_step_s if pool != "text" else times.encode_s
    tally.work.step_s = step or 0.0
    return tally.work
