"""A run's JSON report and its text summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from srserve.workload.records import RequestRecord
from srserve.workload.stats import Summary, summarize


class BenchReport(BaseModel):
    label: str
    command: str = ""
    target: str = ""
    api: str = ""
    arrival: dict[str, Any] = Field(default_factory=dict)
    mix: dict[str, Any] = Field(default_factory=dict)
    slo: dict[str, Any] = Field(default_factory=dict)
    replicas_per_pool: dict[str, int] = Field(default_factory=dict)
    started_at: float = 0.0
    summary: Summary
    records: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def build(
        cls,
        label: str,
        records: list[RequestRecord],
        gpus: float | None = None,
        replicas_per_pool: dict[str, int] | None = None,
        **meta: Any,
    ) -> BenchReport:
        return cls(
            label=label,
            summary=summarize(records, gpus, replicas_per_pool),
            records=[r.as_dict() for r in records],
            replicas_per_pool=replicas_per_pool or {},
            **meta,
        )

    def request_records(self) -> list[RequestRecord]:
        return [RequestRecord.from_dict(r) for r in self.records]

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(finite_json(self.model_dump(mode="json")), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> BenchReport:
        return cls.model_validate_json(Path(path).read_text())


def finite_json(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


def _fmt(x: float | None, unit: str = "", digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}{unit}"


def format_summary(label: str, s: Summary) -> str:
    lat = s.latency_s
    lines = [
        f"== {label}",
        f"requests {s.requests}: completed {s.completed}, failed {s.failed}, rejected {s.rejected}, "
        f"unfinished {s.unfinished}; window {_fmt(s.window_s, 's', 1)}",
        f"throughput {_fmt(s.throughput_rps, ' req/s', 3)}"
        + (f" ({_fmt(s.throughput_per_gpu, ' req/s per GPU', 3)})" if s.throughput_per_gpu else ""),
        f"latency mean {_fmt(lat.mean, 's')}  p50 {_fmt(lat.p50, 's')}  p90 {_fmt(lat.p90, 's')}  "
        f"p99 {_fmt(lat.p99, 's')}  max {_fmt(lat.max, 's')}",
    ]
    for pool, q in s.queue_s.items():
        util = s.utilisation.get(pool)
        lines.append(
            f"pool {pool:<9} utilisation {_fmt(util, '', 3)}  queue mean {_fmt(q.mean, 's')}  "
            f"p50 {_fmt(q.p50, 's')}  p99 {_fmt(q.p99, 's')}"
        )
    if s.slo_attainment is not None:
        lines.append(
            f"SLO attainment {_fmt(100 * s.slo_attainment, '%', 1)} of {s.slo_requests}; goodput "
            f"{_fmt(s.goodput_rps, ' req/s', 3)}"
            + (f" ({_fmt(s.goodput_per_gpu, ' req/s per GPU', 3)})" if s.goodput_per_gpu is not None else "")
        )
    if s.switch_step.count:
        lines.append(
            f"switch step mean {_fmt(s.switch_step.mean, '', 1)} (min {s.switch_step.min:g}, max {s.switch_step.max:g})"
        )
    return "\n".join(lines)
