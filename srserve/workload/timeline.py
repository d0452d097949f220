"""A job's stage timeline: the stamps the serving layer records, and the stage spans they define.

One definition for everything that reads a timeline (metrics, pool-work pricing, load-generator
records, plots, the pipeline analysis), so a stage means the same interval everywhere. Stamps are
unix seconds taken where the work happens: the job store stamps `submitted` and `finished`, the
replicas the rest. A job encoded elsewhere (the text-encoder pool) or not at all has no
`encode_start`; one that failed early lacks later stamps, and its missing stages are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Every stamp, in the order a job passes them.
MARKS = (
    "submitted",
    "encode_start",
    "encode_end",
    "sketch_start",
    "sketch_end",
    "render_start",
    "decode_start",
    "render_end",
    "finished",
)


@dataclass(frozen=True)
class Stage:
    """A stage runs from one stamp to a later one."""

    name: str
    start: str
    end: str


STAGES = (
    Stage("queue", "submitted", "encode_start"),  # until a replica took the job (sketch_start when encoded elsewhere)
    Stage("encode", "encode_start", "encode_end"),
    Stage("sketch", "sketch_start", "sketch_end"),
    Stage("handoff", "sketch_end", "render_start"),
    Stage("render", "render_start", "decode_start"),
    Stage("decode", "decode_start", "render_end"),
)
_BY_NAME = {s.name: s for s in STAGES}


@dataclass(frozen=True)
class Timeline:
    """A job's stamps (name -> unix seconds), read through the stage definitions above."""

    marks: Mapping[str, float]

    @classmethod
    def of(cls, marks: Mapping[str, float]) -> Timeline:
        """A copy of `marks` (a job's `timeline` dict), so later stamps on the job do not change it."""
        return cls(dict(marks))

    def interval_between(self, start: str, end: str) -> tuple[float, float] | None:
        """(start, end) stamps, or None unless both are present and in order."""
        a, b = self.marks.get(start), self.marks.get(end)
        if a is None or b is None or b < a:
            return None
        return a, b

    def between(self, start: str, end: str) -> float | None:
        """Seconds from one stamp to another; None unless both are present and in order."""
        iv = self.interval_between(start, end)
        return None if iv is None else iv[1] - iv[0]

    @property
    def start_mark(self) -> str | None:
        """The stamp at which a replica first held the job: encode_start, else sketch_start."""
        for mark in ("encode_start", "sketch_start"):
            if mark in self.marks:
                return mark
        return None

    def interval(self, stage: str) -> tuple[float, float] | None:
        """A stage's (start, end) stamps; the queue ends when a replica took the job."""
        s = _BY_NAME[stage]
        if stage == "queue":
            return None if self.start_mark is None else self.interval_between(s.start, self.start_mark)
        return self.interval_between(s.start, s.end)

    def span(self, stage: str) -> float | None:
        """A stage's seconds (KeyError for a stage not in STAGES)."""
        iv = self.interval(stage)
        return None if iv is None else iv[1] - iv[0]

    def spans(self) -> dict[str, float]:
        """Seconds of each stage the timeline holds, in stage order."""
        return {s.name: d for s in STAGES if (d := self.span(s.name)) is not None}

    @property
    def total(self) -> float | None:
        """Latency as the job store sees it: submitted to finished."""
        return self.between("submitted", "finished")

    @property
    def sketch_interval(self) -> tuple[float, float] | None:
        """When the sketch replica was busy with the job: from its first stamp (encode, else sketch) to sketch_end."""
        return None if self.start_mark is None else self.interval_between(self.start_mark, "sketch_end")

    @property
    def render_interval(self) -> tuple[float, float] | None:
        """When the render replica was busy with the job: render_start to render_end (decode and export included)."""
        return self.interval_between("render_start", "render_end")

    @property
    def sketch_busy(self) -> float | None:
        iv = self.sketch_interval
        return None if iv is None else iv[1] - iv[0]

    @property
    def render_busy(self) -> float | None:
        iv = self.render_interval
        return None if iv is None else iv[1] - iv[0]
