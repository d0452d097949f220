"""Pipeline efficiency from per-request stage timestamps (as recorded in the job store).

Busy times are measured inside the replicas (encode+sketch on the sketch replica, render+decode+
export on the render replica), so CPU contention on a small machine is not counted against
scheduling: the bound is min(1/T_sketch, 1/T_render) with the T measured in the same run.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class StageTimes:
    job_id: str
    submitted: float
    sketch_start: float
    sketch_end: float
    render_start: float
    render_end: float
    switch_step: int | None

    @property
    def sketch_busy(self) -> float:
        return self.sketch_end - self.sketch_start

    @property
    def render_busy(self) -> float:
        return self.render_end - self.render_start


def stage_times(job: dict[str, Any]) -> StageTimes:
    """From a job summary (Job.summary(), or the `srserve` part of an HTTP video object)."""
    t = job["timeline"]
    return StageTimes(
        job_id=job.get("id", ""),
        submitted=t["submitted"],
        sketch_start=t.get("encode_start", t["sketch_start"]),
        sketch_end=t["sketch_end"],
        render_start=t["render_start"],
        render_end=t["render_end"],
        switch_step=job.get("switch_step"),
    )


@dataclass
class PipelineReport:
    requests: int
    t_sketch_s: float
    t_render_s: float
    bound_rps: float
    throughput_rps: float
    efficiency: float
    makespan_s: float
    overlapped_pairs: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def pipeline_report(stages: list[StageTimes]) -> PipelineReport:
    """Steady-state throughput (completions after the first, over their span) against the bound."""
    if len(stages) < 2:
        raise ValueError("need at least two completed requests")
    t_s = statistics.mean(s.sketch_busy for s in stages)
    t_r = statistics.mean(s.render_busy for s in stages)
    bound = min(1 / t_s, 1 / t_r)
    ends = sorted(s.render_end for s in stages)
    throughput = (len(ends) - 1) / (ends[-1] - ends[0])
    ordered = sorted(stages, key=lambda s: s.sketch_start)
    overlapped = sum(1 for a, b in itertools.pairwise(ordered) if b.sketch_start < a.render_end)
    return PipelineReport(
        requests=len(stages),
        t_sketch_s=t_s,
        t_render_s=t_r,
        bound_rps=bound,
        throughput_rps=throughput,
        efficiency=throughput / bound,
        makespan_s=ends[-1] - min(s.submitted for s in stages),
        overlapped_pairs=overlapped,
    )


def gantt(stages: list[StageTimes], width: int = 72) -> str:
    """A text chart: one row per request, `s` while sketching, `r` while rendering."""
    t0 = min(s.submitted for s in stages)
    t1 = max(s.render_end for s in stages)
    scale = width / max(t1 - t0, 1e-9)
    rows = [f"{'request':<10} {'sketch s':>9} {'render s':>9}  0{'-' * (width - 2)}{t1 - t0:.1f}s"]
    for i, s in enumerate(sorted(stages, key=lambda s: s.sketch_start)):
        line = [" "] * width
        for start, end, ch in ((s.sketch_start, s.sketch_end, "s"), (s.render_start, s.render_end, "r")):
            a = int((start - t0) * scale)
            b = max(a + 1, int((end - t0) * scale))
            for x in range(a, min(b, width)):
                line[x] = ch
        rows.append(f"{i:<10} {s.sketch_busy:>9.2f} {s.render_busy:>9.2f}  {''.join(line)}")
    return "\n".join(rows)
