"""Stage profiles from measurements: fitted from the timelines of requests sent one at a time to a
deployment (srserve.loadgen.calibrate sends them), or timed on the engine in-process (no Ray, no
serving overheads).

A least-squares fit over the switch step k separates the per-step costs from each stage's fixed
cost (which, on a deployment, includes the batched progress writes, serialization and RPCs that the
engine alone does not pay).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.engine.request import RequestDefaults
from srserve.planner.profile import Delays, DeviceKind, Profile, ShapeCosts, shape_key
from srserve.workload.records import COLOCATED, RequestRecord

CPU_KIND = "cpu-1thread"


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares y = a + b x; returns (a, b)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("fit_line needs at least two distinct x values")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def switch_points(steps: int, count: int = 5) -> list[int]:
    return sorted({round(i * steps / (count - 1)) for i in range(count)})


def _known(r: RequestRecord, what: str, seconds: float | None) -> float:
    """A span the fit needs; a record lacking it (a stamp missing or out of order) cannot be fitted."""
    if seconds is None:
        raise ValueError(f"request {r.job_id or r.index}: no {what} in its timeline {r.timeline}")
    return seconds


def _span(r: RequestRecord, stage: str) -> float:
    return _known(r, stage, r.stages().span(stage))


@dataclass
class CpuUse:
    """CPU the local cluster used while sequential profiling requests ran (loadgen.cpu_accounting measures it)."""

    replica_s: float
    other_s: float
    wall_s: float
    idle_other_cores: float


def cpu_model(records: list[RequestRecord], use: CpuUse) -> dict[str, float]:
    """Cores a busy replica uses, and the rest of the cluster's cores: idle, and per busy replica
    (requests run one at a time here, so the extra CPU is what running jobs cause)."""
    busy = sum(b - a for r in records for _, _, a, b in r.busy_intervals())
    per_busy = (use.other_s - use.idle_other_cores * use.wall_s) / busy if busy else 0.0
    return {
        "replica_cpu_demand": max(0.1, use.replica_s / busy) if busy else 1.0,
        "background_cpu_idle": use.idle_other_cores,
        "background_cpu_per_busy_replica": max(0.0, per_busy),
    }


def fit_profile(
    records: list[RequestRecord],
    cpu: dict[str, float],
    width: int,
    height: int,
    num_frames: int,
    steps: int,
    host_cores: float | None,
    description: str,
    model_pair: str,
) -> Profile:
    """Per-stage costs from sequential requests' timelines.

    Both layouts stamp the sketch part (the timeline's sketch_busy: encode_start..sketch_end) and
    the render part (render_busy: render_start..render_end); a line fitted over k separates per-step
    costs from fixed costs.
    Disaggregated records give the pools' costs and the handoff delay; colocated records give
    the colocated replica's extra cost over those parts.
    """
    dis = [r for r in records if r.layout != COLOCATED]
    col = [r for r in records if r.layout == COLOCATED]
    base = dis or col
    kk = [float(r.switch_step) for r in base]
    encode = statistics.mean(_span(r, "encode") for r in base)
    a_s, large = fit_line(kk, [_known(r, "sketch busy time", r.stages().sketch_busy) for r in base])
    decode = statistics.mean(_span(r, "decode") for r in base)
    render_busy = [_known(r, "render busy time", r.stages().render_busy) for r in base]
    a_r, small = fit_line([steps - k for k in kk], render_busy)
    costs = ShapeCosts(
        encode_s=encode,
        large_step_s=large,
        small_step_s=small,
        decode_s=decode,
        sketch_overhead_s=a_s - encode,
        render_overhead_s=a_r - decode,
    )
    if col:
        extra = [
            _known(r, "replica time", r.stages().between("encode_start", "render_end"))
            - costs.colocated_s(steps, r.switch_step or 0)
            for r in col
        ]
        costs.colocated_overhead_s = statistics.mean(extra)
    delays = Delays(
        dispatch_s=statistics.mean(_span(r, "queue") for r in records),
        handoff_s=statistics.mean(_span(r, "handoff") for r in dis) if dis else 0.0,
        completion_s=statistics.mean(
            _known(r, "completion", r.stages().between("render_end", "finished")) for r in records
        ),
    )
    return Profile(
        source="measured",
        description=description,
        model_pair=model_pair,
        defaults=RequestDefaults(width=width, height=height, num_frames=num_frames, num_inference_steps=steps),
        kinds={CPU_KIND: DeviceKind(name=CPU_KIND, shapes={shape_key(width, height, num_frames): costs})},
        delays=delays,
        host_cores=host_cores if host_cores is not None else float(os.cpu_count() or 1),
        **cpu,
        measured_at={"machine": platform.machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S")},
    )


def profile_engine(model: ModelPairConfig, width: int, height: int, num_frames: int, steps: int, reps: int = 3):
    """In-process stage times: no serving overheads, no delays (a lower bound for the deployment)."""
    engine = SRDiffusionEngine(model)
    engine.generate(
        GenerationRequest(prompt="warm up", num_inference_steps=2, width=width, height=height, num_frames=num_frames)
    )
    fields = {
        "prompt": "a red fox running through snow",
        "num_inference_steps": steps,
        "width": width,
        "height": height,
        "num_frames": num_frames,
    }
    t: dict[str, list[float]] = {"encode": [], "large": [], "small": [], "decode": []}
    for rep in range(reps):
        large = engine.generate(GenerationRequest(**fields, seed=rep, switch=f"fixed:{steps}"))
        small = engine.generate(GenerationRequest(**fields, seed=rep, switch="fixed:0"))
        t["encode"].append(large.timings["encode"])
        t["large"].append(large.timings["sketch"] / steps)
        t["small"].append(small.timings["render"] / steps)
        t["decode"].append(large.timings["decode"] + large.timings["export"])
    med = {k: statistics.median(v) for k, v in t.items()}
    costs = ShapeCosts(
        encode_s=med["encode"], large_step_s=med["large"], small_step_s=med["small"], decode_s=med["decode"]
    )
    return Profile(
        source="measured",
        description=f"tiny pair in-process engine on this machine, torch threads {model.num_threads}, {reps} reps",
        model_pair=model.name,
        defaults=RequestDefaults(width=width, height=height, num_frames=num_frames, num_inference_steps=steps),
        kinds={CPU_KIND: DeviceKind(name=CPU_KIND, shapes={shape_key(width, height, num_frames): costs})},
        host_cores=float(os.cpu_count() or 1),
        measured_at={"machine": platform.machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S")},
    )
