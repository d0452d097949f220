"""Per-request records built from the job store's timeline, and the pool busy intervals they imply.

Timeline stamps (unix seconds) come from the server: `submitted` (job created), `encode_start`,
`encode_end`, `sketch_start`, `sketch_end`, `render_start`, `decode_start`, `render_end`,
`finished`. Replicas name which replica ran each stage (`sketch`/`render`, or `colocated`).
Latency is `finished - submitted`, so client polling never adds to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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
        t = self.timeline
        if not self.completed or "finished" not in t or "submitted" not in t:
            return None
        return t["finished"] - t["submitted"]

    @property
    def met_slo(self) -> bool:
        lat = self.latency
        return lat is not None and self.slo_s is not None and lat <= self.slo_s

    @property
    def layout(self) -> str:
        return COLOCATED if COLOCATED in self.replicas else "disaggregated"

    def stage_start(self) -> float | None:
        t = self.timeline
        return t.get("encode_start", t.get("sketch_start"))

    def queue_waits(self) -> dict[str, float]:
        """Seconds each job waited for a pool: before its first stage, and between sketch and render."""
        t = self.timeline
        out: dict[str, float] = {}
        start = self.stage_start()
        if start is not None and "submitted" in t:
            out[COLOCATED if self.layout == COLOCATED else SKETCH] = start - t["submitted"]
        if self.layout != COLOCATED and "render_start" in t and "sketch_end" in t:
            out[RENDER] = t["render_start"] - t["sketch_end"]
        return out

    def busy_intervals(self) -> list[tuple[str, str, float, float]]:
        """(pool, replica, start, end) for every stage this job held a replica."""
        t = self.timeline
        start = self.stage_start()
        out = []
        if self.layout == COLOCATED:
            end = t.get("render_end", t.get("finished"))
            if start is not None and end is not None:
                out.append((COLOCATED, self.replicas[COLOCATED], start, end))
            return out
        if start is not None and "sketch_end" in t:
            out.append((SKETCH, self.replicas.get(SKETCH, "?"), start, t["sketch_end"]))
        if "render_start" in t and "render_end" in t:
            out.append((RENDER, self.replicas.get(RENDER, "?"), t["render_start"], t["render_end"]))
        return out

    def durations(self) -> dict[str, float]:
        """Seconds per phase: queue (before the first stage), encode, sketch, handoff (sketch end to
        render start, disaggregated only), render (denoising), decode (VAE + mp4), completion."""
        t = self.timeline
        start = "encode_start" if "encode_start" in t else "sketch_start"
        spans = {
            "queue": ("submitted", start),
            "encode": ("encode_start", "encode_end"),
            "sketch": ("encode_end" if "encode_end" in t else "sketch_start", "sketch_end"),
            "handoff": ("sketch_end", "render_start"),
            "render": ("render_start", "decode_start"),
            "decode": ("decode_start", "render_end"),
            "completion": ("render_end", "finished"),
        }
        return {name: t[b] - t[a] for name, (a, b) in spans.items() if a in t and b in t}

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
