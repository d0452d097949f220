"""Per-request records built from the job store's timeline, and the pool busy intervals they imply.

Timeline stamps (unix seconds, srserve.workload.timeline.MARKS) come from the server; replicas name
which replica ran each stage (`sketch`/`render`, or `colocated`). Latency is `finished - submitted`,
so client polling never adds to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from srserve.workload.timeline import Timeline

COLOCATED = "colocated"
SKETCH = "sketch"
RENDER = "render"
COMPLETED = "completed"


@dataclass
class RequestRecord:
    index: int
    request_class: str
    api: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    sent_at: float = 0.0  # client clock, when the submit call was made
    job_id: str | None = None
    # completed | failed | cancelled (server), rejected (admission), error (client/transport), unfinished
    status: str = "pending"
    error: str | None = None
    timeline: dict[str, float] = field(default_factory=dict)
    switch_step: int | None = None
    switch_reason: str | None = None  # the load-aware switch's reason for its cap (srserve: switch_reason)
    num_steps: int = 0
    replicas: dict[str, str] = field(default_factory=dict)
    seen_done_at: float | None = None  # client clock, when the poller saw the job end
    slo_s: float | None = None

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def latency(self) -> float | None:
        return self.stages().total if self.completed else None

    @property
    def met_slo(self) -> bool:
        lat = self.latency
        return lat is not None and self.slo_s is not None and lat <= self.slo_s

    @property
    def layout(self) -> str:
        return COLOCATED if COLOCATED in self.replicas else "disaggregated"

    def stages(self) -> Timeline:
        """The server's stamps read as stages (srserve.workload.timeline); a view, not a copy."""
        return Timeline(self.timeline)

    def queue_waits(self) -> dict[str, float]:
        """Seconds each job waited for a pool: before its first stage, and between sketch and render."""
        stages = self.stages()
        out: dict[str, float] = {}
        if (queue := stages.span("queue")) is not None:
            out[COLOCATED if self.layout == COLOCATED else SKETCH] = queue
        if self.layout != COLOCATED and (handoff := stages.span("handoff")) is not None:
            out[RENDER] = handoff
        return out

    def busy_intervals(self) -> list[tuple[str, str, float, float]]:
        """(pool, replica, start, end) for every stage this job held a replica."""
        stages = self.stages()
        out = []
        if self.layout == COLOCATED:
            start = stages.start_mark
            end = "render_end" if "render_end" in self.timeline else "finished"
            if start is not None and (iv := stages.interval_between(start, end)) is not None:
                out.append((COLOCATED, self.replicas[COLOCATED], *iv))
            return out
        if (iv := stages.sketch_interval) is not None:
            out.append((SKETCH, self.replicas.get(SKETCH, "?"), *iv))
        if (iv := stages.render_interval) is not None:
            out.append((RENDER, self.replicas.get(RENDER, "?"), *iv))
        return out

    def durations(self) -> dict[str, float]:
        """Seconds per stage (srserve.workload.timeline.STAGES; a colocated replica's handoff is 0) and
        completion: render end to the job store's `finished`."""
        stages = self.stages()
        out = stages.spans()
        if (completion := stages.between("render_end", "finished")) is not None:
            out["completion"] = completion
        return out

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency_s"] = self.latency
        data["durations_s"] = self.durations()
        data["met_slo"] = self.met_slo if self.slo_s is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})
