"""Stage profiles: what one request costs on each stage, per device kind and output shape.

A request with N steps that switches after k sketch steps costs, on a device of kind K:
  sketch replica:    encode + k * large_step + sketch_overhead
  render replica:    (N - k) * small_step + decode + render_overhead
  colocated replica: encode + k * large_step + (N - k) * small_step + decode + colocated_overhead
plus fixed delays that hold no replica: dispatch (submission to first stage), handoff (sketch end
to render-pool arrival) and completion (render end to the job's `finished`).

Profiles come from three places, and say which in `source`: `measured` on a deployment or an
engine here (`srserve plan profile`), `measured` on a GPU (`srserve profile-gpu`), or `derived`
from published figures (benchmarks/results/profile_wan21_a100_derived.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from srserve.engine.request import RequestDefaults

PROFILE_FORMAT = "srserve.profile"
PROFILE_VERSION = 1


def shape_key(width: int, height: int, num_frames: int) -> str:
    return f"{width}x{height}x{num_frames}"


class DegreeCosts(BaseModel):
    """Step seconds of one replica of a parallel degree (all its devices busy together)."""

    model_config = ConfigDict(extra="forbid")

    large_step_s: float | None = Field(None, gt=0)
    small_step_s: float | None = Field(None, gt=0)


class ShapeCosts(BaseModel):
    """Seconds per stage for one output shape on one device kind (CFG on, as served)."""

    model_config = ConfigDict(extra="forbid")

    encode_s: float = Field(ge=0)
    large_step_s: float = Field(gt=0)
    small_step_s: float = Field(gt=0)
    decode_s: float = Field(ge=0)
    sketch_overhead_s: float = 0.0
    render_overhead_s: float = 0.0
    colocated_overhead_s: float = 0.0
    # Extra figures a GPU profile records (not needed by the simulator).
    detail: dict[str, float] = Field(default_factory=dict)
    # Step times of a multi-device replica, per parallel degree (ParallelSpec.label(): u2, c2, u2xc2):
    # such a replica costs that many devices of this kind. The one-device figures above are degree 1.
    parallel: dict[str, DegreeCosts] = Field(default_factory=dict)

    def at_degree(self, label: str, step: Literal["large", "small"]) -> ShapeCosts:
        """These costs on a replica of degree `label`: its `step` time from the profile (KeyError if unmeasured)."""
        if label == "1":
            return self
        degree = self.parallel.get(label)
        value = None if degree is None else getattr(degree, f"{step}_step_s")
        if value is None:
            raise KeyError(f"profile has no {step}-model step time for parallel degree {label!r} at this shape")
        return self.model_copy(update={f"{step}_step_s": value})

    def with_cache(self, large: float = 1.0, small: float = 1.0) -> ShapeCosts:
        """These costs with step caches speeding the large and the small model's steps up."""
        if large == 1.0 and small == 1.0:
            return self
        return self.model_copy(
            update={"large_step_s": self.large_step_s / large, "small_step_s": self.small_step_s / small}
        )

    def sketch_s(self, k: int) -> float:
        return max(0.0, self.encode_s + k * self.large_step_s + self.sketch_overhead_s)

    def render_s(self, n: int, k: int) -> float:
        return max(0.0, (n - k) * self.small_step_s + self.decode_s + self.render_overhead_s)

    def colocated_s(self, n: int, k: int) -> float:
        return max(
            0.0,
            self.encode_s
            + k * self.large_step_s
            + (n - k) * self.small_step_s
            + self.decode_s
            + self.colocated_overhead_s,
        )


class DeviceKind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    # Ray's accelerator type for this kind (ray_actor_options.accelerator_type); None on CPU.
    accelerator_type: str | None = None
    memory_gib: float | None = None
    peak_bf16_tflops: float | None = None
    shapes: dict[str, ShapeCosts]


class Delays(BaseModel):
    """Latency that holds no replica (ingress, job store, artifact storage)."""

    model_config = ConfigDict(extra="forbid")

    dispatch_s: float = 0.0
    handoff_s: float = 0.0
    completion_s: float = 0.0


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["srserve.profile"] = PROFILE_FORMAT
    version: int = PROFILE_VERSION
    source: Literal["measured", "derived"]
    description: str
    model_pair: str
    # The pair's default request shape: what a mix class that leaves a size unset gets.
    defaults: RequestDefaults = RequestDefaults()
    kinds: dict[str, DeviceKind]
    delays: Delays = Delays()
    # Memory each role needs on a device (GiB, weights plus peak activations), to rule out
    # placements that cannot fit (e.g. the 14B sketch model on a 24 GiB GPU).
    role_memory_gib: dict[str, float] = Field(default_factory=dict)
    # CPU-only profiles: replicas share this many cores (the simulator models processor sharing):
    # a busy replica needs `replica_cpu_demand` cores to run at full speed, and the rest of the
    # cluster (ingress, job store, proxies, Ray, the load generator) takes `background_cpu_idle` cores
    # plus `background_cpu_per_busy_replica` for each replica running a job (its per-step reports,
    # the ingress and proxy work it causes). All measured by `srserve profile deployment`.
    host_cores: float | None = None
    replica_cpu_demand: float = Field(1.0, gt=0)
    background_cpu_idle: float = Field(0.0, ge=0)
    background_cpu_per_busy_replica: float = Field(0.0, ge=0)
    # The switch-step distribution of the adaptive policy, per step count (N -> {k: probability}).
    adaptive_switch: dict[int, dict[int, float]] = Field(default_factory=dict)
    measured_at: dict[str, str] = Field(default_factory=dict)

    def costs(self, kind: str, width: int, height: int, num_frames: int) -> ShapeCosts:
        dk = self.kinds.get(kind)
        if dk is None:
            raise KeyError(f"profile has no device kind {kind!r} (have {sorted(self.kinds)})")
        key = shape_key(width, height, num_frames)
        if key not in dk.shapes:
            raise KeyError(f"profile kind {kind!r} has no shape {key} (have {sorted(dk.shapes)})")
        return dk.shapes[key]

    def fits(self, kind: str, roles: tuple[str, ...]) -> bool:
        """Whether a device of `kind` holds these roles' memory (unknown sizes are assumed to fit)."""
        mem = self.kinds[kind].memory_gib
        if mem is None or not self.role_memory_gib:
            return True
        return sum(self.role_memory_gib.get(r, 0.0) for r in roles) <= mem

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> Profile:
        return cls.model_validate_json(Path(path).read_text())
