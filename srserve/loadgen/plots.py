"""PNG plots of a run: latency CDF (several runs overlaid), per-pool utilisation over time, and a
stage timeline of the requests (queue, sketch, handoff wait, render, decode)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from srserve.workload.records import COLOCATED, RequestRecord
from srserve.workload.stats import measurement_window, utilisation_series
from srserve.workload.timeline import STAGES

STAGE_COLOURS = {  # one per srserve.workload.timeline.STAGES
    "queue": "#d0d0d0",
    "encode": "#9e9ac8",
    "sketch": "#3182bd",
    "handoff": "#fdd0a2",
    "render": "#e6550d",
    "decode": "#31a354",
}


def latency_cdf(runs: Mapping[str, Sequence[RequestRecord]], path: str | Path, title: str = "latency CDF") -> Path:
    values = {label: [r.latency for r in records if r.latency is not None] for label, records in runs.items()}
    return latency_cdf_values(values, path, title)


def latency_cdf_values(runs: Mapping[str, Sequence[float]], path: str | Path, title: str = "latency CDF") -> Path:
    """One step curve per run; a run labelled "X predicted" is drawn dashed in the colour of "X measured"."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    for label, latencies in runs.items():
        lat = sorted(latencies)
        if not lat:
            continue
        ys = [(i + 1) / len(lat) for i in range(len(lat))]
        base, _, kind = label.rpartition(" ")
        style = {"linestyle": "--"} if kind == "predicted" else {}
        if kind in ("measured", "predicted") and base in colours:
            style["color"] = colours[base]
        (line,) = ax.step(lat, ys, where="post", label=f"{label} (n={len(lat)})", **style)
        if kind in ("measured", "predicted"):
            colours.setdefault(base, line.get_color())
    ax.set_xlabel("latency (s, submitted to finished)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)


def utilisation_over_time(
    records: Sequence[RequestRecord],
    path: str | Path,
    replicas_per_pool: dict[str, int] | None = None,
    bin_s: float | None = None,
    title: str = "pool utilisation",
) -> Path:
    t0, t1 = measurement_window(records)
    bin_s = bin_s or max(0.5, (t1 - t0) / 60)
    starts, series = utilisation_series(records, bin_s, replicas_per_pool)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for pool, ys in sorted(series.items()):
        ax.step(starts, ys, where="post", label=pool)
    ax.set_xlabel(f"time (s, bins of {bin_s:.1f}s)")
    ax.set_ylabel("busy fraction")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def _segments(r: RequestRecord) -> list[tuple[str, float, float]]:
    stages = r.stages()
    names = [s.name for s in STAGES if s.name != "handoff" or r.layout != COLOCATED]
    return [(name, *iv) for name in names if (iv := stages.interval(name)) is not None]


def stage_timeline(records: Sequence[RequestRecord], path: str | Path, title: str = "stage timeline") -> Path:
    done = sorted((r for r in records if r.completed), key=lambda r: r.timeline["submitted"])
    t0, _ = measurement_window(records)
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.18 * len(done) + 1)))
    for row, r in enumerate(done):
        for name, a, b in _segments(r):
            ax.barh(row, b - a, left=a - t0, color=STAGE_COLOURS[name], height=0.8, linewidth=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STAGE_COLOURS.values()]
    ax.legend(handles, list(STAGE_COLOURS), ncol=6, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1), frameon=False)
    ax.set_xlabel("time (s from the first submission)")
    ax.set_ylabel("request (by submission)")
    ax.invert_yaxis()
    ax.set_title(title, pad=22)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_run_plots(
    label: str, records: Sequence[RequestRecord], out_dir: str | Path, replicas_per_pool: dict[str, int] | None = None
) -> list[Path]:
    out = Path(out_dir)
    return [
        latency_cdf({label: records}, out / "latency_cdf.png", f"{label}: latency CDF"),
        utilisation_over_time(records, out / "utilisation.png", replicas_per_pool, title=f"{label}: pool utilisation"),
        stage_timeline(records, out / "timeline.png", f"{label}: stage timeline"),
    ]
