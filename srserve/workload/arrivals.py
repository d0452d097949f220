"""Arrival processes: open-loop (Poisson, gamma with a burstiness CV, a trace file) and closed-loop.

The same generators feed the load runner and the planner's simulator, so a simulation can replay
exactly the arrival sequence a measured run used (same spec, same seed).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class PoissonArrivals(BaseModel):
    """Exponential inter-arrival times at `rate` requests per second."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["poisson"] = "poisson"
    rate: float = Field(gt=0)

    def gaps(self, rng: random.Random):
        while True:
            yield rng.expovariate(self.rate)


class GammaArrivals(BaseModel):
    """Gamma inter-arrival times with mean 1/rate and coefficient of variation `cv` (1 = Poisson, >1 bursty)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["gamma"] = "gamma"
    rate: float = Field(gt=0)
    cv: float = Field(1.0, gt=0)

    def gaps(self, rng: random.Random):
        shape = 1.0 / (self.cv * self.cv)
        scale = 1.0 / (self.rate * shape)
        while True:
            yield rng.gammavariate(shape, scale)


class TraceEntry(BaseModel):
    """One line of a trace: seconds from the start, and optional request fields / class / SLO."""

    model_config = ConfigDict(extra="forbid")
    t: float = Field(ge=0)
    request_class: str | None = Field(None, alias="class")
    fields: dict[str, Any] = Field(default_factory=dict)
    slo_s: float | None = Field(None, gt=0)


class TraceArrivals(BaseModel):
    """Arrival times (and request shapes) from a JSON-lines file, one TraceEntry per line."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["trace"] = "trace"
    path: str

    def entries(self) -> list[TraceEntry]:
        lines = Path(self.path).read_text().splitlines()
        out = [TraceEntry.model_validate(json.loads(line)) for line in lines if line.strip()]
        return sorted(out, key=lambda e: e.t)


class ClosedLoop(BaseModel):
    """`concurrency` clients, each sending its next request `think_s` after the previous one finished."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["closed"] = "closed"
    concurrency: int = Field(ge=1)
    think_s: float = Field(0.0, ge=0)


ArrivalSpec = Annotated[
    PoissonArrivals | GammaArrivals | TraceArrivals | ClosedLoop,
    Field(discriminator="kind"),
]
OpenLoopSpec = PoissonArrivals | GammaArrivals | TraceArrivals


def parse_arrival(text: str) -> PoissonArrivals | GammaArrivals | TraceArrivals | ClosedLoop:
    """`poisson:RATE`, `gamma:RATE:CV`, `trace:FILE` or `closed:CONCURRENCY[:THINK_S]`."""
    kind, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    try:
        if kind == "poisson" and len(parts) == 1:
            return PoissonArrivals(rate=float(parts[0]))
        if kind == "gamma" and len(parts) == 2:
            return GammaArrivals(rate=float(parts[0]), cv=float(parts[1]))
        if kind == "trace" and rest:
            return TraceArrivals(path=rest)
        if kind == "closed" and len(parts) in (1, 2):
            return ClosedLoop(concurrency=int(parts[0]), think_s=float(parts[1]) if len(parts) == 2 else 0.0)
    except ValueError as exc:
        raise ValueError(f"arrival: {text!r}: {exc}") from None
    raise ValueError(
        f"arrival: cannot parse {text!r}; use poisson:RATE, gamma:RATE:CV, trace:FILE or closed:CONCURRENCY[:THINK_S]"
    )


def open_loop_schedule(
    spec: OpenLoopSpec, max_requests: int | None, max_duration_s: float | None, seed: int
) -> list[tuple[float, TraceEntry | None]]:
    """Arrival offsets (seconds from start) within the bounds, each with its trace entry if any."""
    if max_requests is None and max_duration_s is None and not isinstance(spec, TraceArrivals):
        raise ValueError("an open-loop run needs a request count or a duration bound")
    limit_n = max_requests if max_requests is not None else math.inf
    limit_t = max_duration_s if max_duration_s is not None else math.inf
    out: list[tuple[float, TraceEntry | None]] = []
    if isinstance(spec, TraceArrivals):
        for entry in spec.entries():
            if len(out) >= limit_n or entry.t > limit_t:
                break
            out.append((entry.t, entry))
        return out
    rng = random.Random(seed)
    t = 0.0
    gaps = spec.gaps(rng)
    while len(out) < limit_n:
        if out:  # the first request goes at t=0
            t += next(gaps)
        if t > limit_t:
            break
        out.append((t, None))
    return out
