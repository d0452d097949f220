"""What a run will send: the request sequence (class, fields, SLO) and, for open loop, when.

Deterministic in the seed, so the planner's simulator replays exactly the sequence a measured
run sent (arrivals from `seed`, classes from `seed + 1`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from srserve.workload.arrivals import ClosedLoop, GammaArrivals, PoissonArrivals, TraceArrivals, open_loop_schedule
from srserve.workload.mix import RequestClass, RequestMix


class SloPolicy(BaseModel):
    """A request's SLO: its trace entry's or class's `slo_s`, else `scale` x its class's unloaded
    latency, else the global `slo_s`; None means the request has no SLO."""

    model_config = ConfigDict(extra="forbid")

    slo_s: float | None = Field(None, gt=0)
    scale: float | None = Field(None, gt=0)
    unloaded_s: dict[str, float] = Field(default_factory=dict)

    def for_request(self, request_class: RequestClass, explicit: float | None = None) -> float | None:
        if explicit is not None:
            return explicit
        if request_class.slo_s is not None:
            return request_class.slo_s
        if self.scale is not None and request_class.name in self.unloaded_s:
            return self.scale * self.unloaded_s[request_class.name]
        return self.slo_s


@dataclass
class PlannedRequest:
    index: int
    offset_s: float | None  # None: closed loop, sent when a client is free
    request_class: RequestClass
    fields: dict[str, Any] = field(default_factory=dict)
    slo_s: float | None = None


def open_loop_plan(
    arrival: PoissonArrivals | GammaArrivals | TraceArrivals,
    mix: RequestMix,
    max_requests: int | None,
    max_duration_s: float | None,
    seed: int = 0,
    slo: SloPolicy | None = None,
) -> list[PlannedRequest]:
    schedule = open_loop_schedule(arrival, max_requests, max_duration_s, seed)
    classes = random.Random(seed + 1)
    out = []
    for i, (t, entry) in enumerate(schedule):
        if entry is not None and entry.request_class is not None:
            cls = mix.by_name(entry.request_class)
        else:
            cls = mix.sample(classes)
        fields = cls.fields(seed=seed + i) | (entry.fields if entry is not None else {})
        explicit = entry.slo_s if entry is not None else None
        out.append(PlannedRequest(i, t, cls, fields, (slo or SloPolicy()).for_request(cls, explicit)))
    return out


def closed_loop_stream(mix: RequestMix, seed: int = 0, slo: SloPolicy | None = None) -> Iterator[PlannedRequest]:
    classes = random.Random(seed + 1)
    i = 0
    while True:
        cls = mix.sample(classes)
        yield PlannedRequest(i, None, cls, cls.fields(seed=seed + i), (slo or SloPolicy()).for_request(cls))
        i += 1


def is_closed(arrival: object) -> bool:
    return isinstance(arrival, ClosedLoop)
