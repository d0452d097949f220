"""The planner's search: which sketch:render split (or colocated pool) of a GPU budget serves a
load best, by simulated goodput (requests per second that met their SLO) and p99.

Candidates: every GPU kind that can hold both models as one colocated pool; every pair of kinds
(sketch kind, render kind; one kind per pool, since a Serve deployment has one accelerator type)
with replica counts within the budget. Large budgets are pruned analytically first (capacity of
each pool from the mean stage times) and only the most promising candidates are simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from srserve.engine.parallel.config import ParallelSpec
from srserve.engine.request import RequestDefaults, SwitchPolicy
from srserve.planner.profile import Profile
from srserve.planner.simulator import (
    COLOCATED_ROLES,
    RENDER_ROLES,
    SKETCH_ROLES,
    ClusterLayout,
    PoolSpec,
    simulate,
    unloaded_latency,
)
from srserve.serving.control.pricing.load_switch import LoadSwitchConfig
from srserve.workload.arrivals import GammaArrivals, PoissonArrivals, TraceArrivals
from srserve.workload.mix import RequestClass, RequestMix
from srserve.workload.plan import SloPolicy
from srserve.workload.stats import Summary, steady_window, summarize


class PlanSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget: dict[str, int] = Field(description="GPUs available per device kind")
    arrival: PoissonArrivals | GammaArrivals | TraceArrivals
    mix: RequestMix
    requests: int = Field(2000, ge=10)
    seed: int = 0
    slo: SloPolicy = SloPolicy()
    # Kind whose single colocated replica sets the unloaded latency that `slo.scale` multiplies.
    slo_reference_kind: str | None = None
    layouts: tuple[Literal["disaggregated", "colocated"], ...] = ("disaggregated", "colocated")
    max_ongoing: int = 4
    max_simulated: int = Field(24, ge=1)
    objective: Literal["goodput", "goodput_per_gpu"] = "goodput"
    # Step caches' speed factors per pool (sketch, render, colocated), e.g. from benchmarks/speed_knobs.py.
    cache_speedup: dict[Literal["sketch", "render", "colocated"], float] = Field(default_factory=dict)
    load_switch: LoadSwitchConfig = LoadSwitchConfig()
    # Parallel degrees to try per pool (ParallelSpec labels: 1, u2, c2, u2xc2); a replica of degree
    # U x C costs U x C GPUs of the budget and steps at the profile's time for that degree.
    parallel: dict[Literal["sketch", "render"], tuple[str, ...]] = Field(default_factory=dict)

    def pool(self, name: str, kind: str, replicas: int, parallel: str = "1") -> PoolSpec:
        return PoolSpec(
            kind=kind,
            replicas=replicas,
            max_ongoing=self.max_ongoing,
            cache_speedup=self.cache_speedup.get(name, 1.0),
            parallel=parallel,
        )

    def degrees(self, pool: Literal["sketch", "render"]) -> tuple[str, ...]:
        return self.parallel.get(pool) or ("1",)


@dataclass
class Evaluated:
    cluster: ClusterLayout
    summary: Summary
    analytic_capacity_rps: float

    def row(self) -> dict:
        s = self.summary
        return {
            "config": self.cluster.label(),
            "layout": self.cluster.layout,
            "gpus": self.cluster.gpus,
            "pools": {name: p.model_dump() for name, p in self.cluster.pools().items()},
            "analytic_capacity_rps": self.analytic_capacity_rps,
            "goodput_rps": s.goodput_rps,
            "goodput_per_gpu": s.goodput_per_gpu,
            "throughput_rps": s.throughput_rps,
            "slo_attainment": s.slo_attainment,
            "p50_s": s.latency_s.p50,
            "p99_s": s.latency_s.p99,
            "utilisation": s.utilisation,
        }


def _shape(cls: RequestClass, d: RequestDefaults) -> tuple[int, int, int, int]:
    return (
        cls.width or d.width,
        cls.height or d.height,
        cls.num_frames or d.num_frames,
        cls.num_inference_steps or d.num_inference_steps,
    )


def _mean_switch(cls: RequestClass, n: int, profile: Profile) -> float:
    policy = SwitchPolicy.parse(cls.switch)
    if policy.kind == "fixed":
        return float(min(policy.fixed_step(n), n))
    dist = cls.switch_steps or profile.adaptive_switch.get(n) or {}
    total = sum(dist.values())
    if not total:
        raise ValueError(f"class {cls.name!r}: adaptive switch without a switch-step distribution for N={n}")
    return sum(k * p for k, p in dist.items()) / total


def mean_work(
    profile: Profile,
    mix: RequestMix,
    defaults: RequestDefaults,
    pool: str,
    kind: str,
    speedup: float = 1.0,
    parallel: str = "1",
) -> float:
    """Expected replica-seconds one request costs `pool` on a device of `kind` (its cache: `speedup`).

    A `load` switch counts as adaptive here; the simulation applies its caps under load."""
    total_w = sum(c.weight for c in mix.classes)
    out = 0.0
    for cls in mix.classes:
        w, h, f, n = _shape(cls, defaults)
        k = _mean_switch(cls, n, profile)
        c = profile.costs(kind, w, h, f)
        if pool in ("sketch", "render"):  # a multi-device replica's step time (degree 1: unchanged)
            c = c.at_degree(parallel, "large" if pool == "sketch" else "small")
        c = c.with_cache(
            large=speedup if pool in ("sketch", "colocated") else 1.0,
            small=speedup if pool in ("render", "colocated") else 1.0,
        )
        cost = {"sketch": c.sketch_s(k), "render": c.render_s(n, k), "colocated": c.colocated_s(n, k)}[pool]
        out += cls.weight / total_w * cost
    return out


def analytic_capacity(profile: Profile, cluster: ClusterLayout, mix: RequestMix, defaults: RequestDefaults) -> float:
    """Requests per second the busiest pool can finish (and, on a CPU host, the cores)."""
    caps = []
    demand = 0.0
    for name, spec in cluster.pools().items():
        w = mean_work(profile, mix, defaults, name, spec.kind, spec.cache_speedup, spec.parallel)
        caps.append(spec.replicas / w if w > 0 else math.inf)
        demand += w
    cap = min(caps)
    if profile.host_cores is not None and demand > 0:
        free = profile.host_cores - profile.background_cpu_idle
        cap = min(cap, free / (profile.replica_cpu_demand * demand))
    return cap


def _fits(profile: Profile, kind: str, roles: tuple[str, ...]) -> bool:
    return profile.fits(kind, roles)


def _replica_pairs(spec: PlanSpec, a: str, b: str, ds: str, dr: str) -> list[tuple[int, int]]:
    """(sketch, render) replica counts within the budget, a replica of degree d costing d's devices;
    one kind for both pools: all of it used that replicas can use."""
    da, db = ParallelSpec.parse(ds).world_size, ParallelSpec.parse(dr).world_size
    if a == b:
        n = spec.budget[a]
        return [(s, (n - s * da) // db) for s in range(1, n // da + 1) if (n - s * da) // db >= 1]
    return [(s, r) for s in range(1, spec.budget[a] // da + 1) for r in range(1, spec.budget[b] // db + 1)]


def enumerate_candidates(profile: Profile, spec: PlanSpec) -> list[ClusterLayout]:
    out: list[ClusterLayout] = []
    kinds = [k for k, n in spec.budget.items() if n > 0]
    for kind in kinds:
        if kind not in profile.kinds:
            raise KeyError(f"budget names kind {kind!r}, which the profile lacks (have {sorted(profile.kinds)})")
    if "colocated" in spec.layouts:
        for kind in kinds:
            if _fits(profile, kind, COLOCATED_ROLES):
                pool = spec.pool("colocated", kind, spec.budget[kind])
                out.append(ClusterLayout(layout="colocated", colocated=pool))
    if "disaggregated" in spec.layouts:
        for a in kinds:
            if not _fits(profile, a, SKETCH_ROLES):
                continue
            for b in kinds:
                if not _fits(profile, b, RENDER_ROLES):
                    continue
                for ds, dr in ((ds, dr) for ds in spec.degrees("sketch") for dr in spec.degrees("render")):
                    for s, r in _replica_pairs(spec, a, b, ds, dr):
                        out.append(
                            ClusterLayout(
                                layout="disaggregated",
                                sketch=spec.pool("sketch", a, s, ds),
                                render=spec.pool("render", b, r, dr),
                            )
                        )
    if not out:
        raise ValueError("no candidate fits: no device kind in the budget holds the models (see role_memory_gib)")
    return out


def shortlist(profile: Profile, spec: PlanSpec, defaults: RequestDefaults) -> list[tuple[ClusterLayout, float]]:
    """Candidates worth simulating: every colocated one, and the disaggregated ones with the most
    analytic capacity (and the most capacity per GPU), up to `max_simulated`."""
    scored = [(c, analytic_capacity(profile, c, spec.mix, defaults)) for c in enumerate_candidates(profile, spec)]
    colocated = [x for x in scored if x[0].layout == "colocated"]
    dis = [x for x in scored if x[0].layout == "disaggregated"]
    room = max(0, spec.max_simulated - len(colocated))
    by_cap = sorted(dis, key=lambda x: (-x[1], x[0].gpus))
    by_eff = sorted(dis, key=lambda x: (-x[1] / x[0].gpus, -x[1]))
    picked: list[tuple[ClusterLayout, float]] = []
    seen: set[str] = set()
    for a, b in zip(by_cap, by_eff, strict=True):
        for item in (a, b):
            if len(picked) >= room:
                break
            if item[0].label() not in seen:
                seen.add(item[0].label())
                picked.append(item)
    return colocated + picked


def reference_unloaded(profile: Profile, spec: PlanSpec, defaults: RequestDefaults) -> dict[str, float]:
    """Each class alone on one colocated replica of the reference kind: the base of `slo.scale`."""
    kind = spec.slo_reference_kind or next(k for k, n in spec.budget.items() if n > 0)
    ref = ClusterLayout(layout="colocated", colocated=PoolSpec(kind=kind, replicas=1))
    return {c.name: unloaded_latency(profile, ref, c, defaults) for c in spec.mix.classes}


def evaluate(
    profile: Profile, spec: PlanSpec, cluster: ClusterLayout, defaults: RequestDefaults, slo: SloPolicy
) -> Summary:
    recs = simulate(
        profile,
        cluster,
        spec.arrival,
        spec.mix,
        defaults,
        max_requests=spec.requests,
        seed=spec.seed,
        slo=slo,
        load_switch=spec.load_switch,
    )
    # Steady state: the empty-system start and the drain of a bounded run would bias the figures.
    return summarize(recs, cluster.gpus, cluster.replicas_per_pool(), steady_window(recs))


def _rank_key(e: Evaluated, objective: str) -> tuple:
    s = e.summary
    good = (s.goodput_per_gpu if objective == "goodput_per_gpu" else s.goodput_rps) or 0.0
    p99 = s.latency_s.p99 if math.isfinite(s.latency_s.p99) else math.inf
    # Goodput within 1% counts as a tie: then fewer GPUs, then lower p99.
    return (-round(good, 2 if good < 10 else 1), e.cluster.gpus, p99)


def plan(profile: Profile, spec: PlanSpec, defaults: RequestDefaults) -> tuple[list[Evaluated], SloPolicy]:
    slo = spec.slo.model_copy()
    if slo.scale is not None and not slo.unloaded_s:
        slo.unloaded_s = reference_unloaded(profile, spec, defaults)
    results = [
        Evaluated(c, evaluate(profile, spec, c, defaults, slo), cap) for c, cap in shortlist(profile, spec, defaults)
    ]
    results.sort(key=lambda e: _rank_key(e, spec.objective))
    return results, slo


def max_rate(
    profile: Profile,
    spec: PlanSpec,
    cluster: ClusterLayout,
    defaults: RequestDefaults,
    slo: SloPolicy,
    attainment: float = 0.9,
    iterations: int = 12,
) -> float:
    """The highest Poisson rate at which the cluster still meets `attainment` of its SLOs and keeps
    up with the arrivals (steady-state throughput >= 95% of the rate: a growing queue with a loose
    SLO does not count), by bisection."""
    hi = 1.5 * analytic_capacity(profile, cluster, spec.mix, defaults)
    lo = 0.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        trial = spec.model_copy(update={"arrival": PoissonArrivals(rate=mid)})
        s = evaluate(profile, trial, cluster, defaults, slo)
        if (s.slo_attainment or 0.0) >= attainment and s.throughput_rps >= 0.95 * mid:
            lo = mid
        else:
            hi = mid
    return lo


def format_plan(results: list[Evaluated], top: int, slo: SloPolicy) -> str:
    lines = [
        f"{'#':>2}  {'configuration':<44}{'GPUs':>5}{'goodput':>9}{'/GPU':>8}{'SLO %':>7}{'p50 s':>9}{'p99 s':>9}"
        f"{'cap rps':>9}  utilisation"
    ]
    for i, e in enumerate(results[:top], 1):
        s = e.summary
        util = " ".join(f"{k} {v:.2f}" for k, v in s.utilisation.items())
        lines.append(
            f"{i:>2}  {e.cluster.label():<44}{e.cluster.gpus:>5}{s.goodput_rps or 0:>9.3f}"
            f"{s.goodput_per_gpu or 0:>8.4f}"
            f"{100 * (s.slo_attainment or 0):>7.1f}{s.latency_s.p50:>9.2f}{s.latency_s.p99:>9.2f}"
            f"{e.analytic_capacity_rps:>9.3f}  {util}"
        )
    if slo.scale is not None:
        ref = ", ".join(f"{k} {v:.2f}s" for k, v in slo.unloaded_s.items())
        lines.append(f"SLO = {slo.scale} x unloaded latency on one colocated replica of the reference kind ({ref})")
    elif slo.slo_s is not None:
        lines.append(f"SLO = {slo.slo_s}s per request")
    return "\n".join(lines)
