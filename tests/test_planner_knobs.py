"""The planner models step caches (a speed factor per pool) and the load-aware switch under load."""

from __future__ import annotations

import pytest

from srserve.planner.search import PlanSpec, analytic_capacity, enumerate_candidates
from srserve.planner.simulator import ClusterLayout, PoolSpec, simulate
from srserve.serving.control.pricing.load_switch import LoadSwitchConfig
from srserve.workload.arrivals import PoissonArrivals
from srserve.workload.mix import RequestClass, RequestMix
from srserve.workload.plan import SloPolicy
from srserve.workload.stats import summarize
from tests.test_planner import DEFAULTS, _profile

# 10 steps, large step 0.1 s, small 0.05 s; adaptive switches after 6 of them (the class's distribution).
ADAPTIVE = {6: 1.0}


def _mix(switch: str) -> RequestMix:
    return RequestMix(classes=[RequestClass(switch=switch, switch_steps=ADAPTIVE)])


def _dis(s: int = 1, r: int = 1, sketch_speedup: float = 1.0, render_speedup: float = 1.0) -> ClusterLayout:
    return ClusterLayout(
        layout="disaggregated",
        sketch=PoolSpec(kind="g", replicas=s, cache_speedup=sketch_speedup),
        render=PoolSpec(kind="g", replicas=r, cache_speedup=render_speedup),
    )


def test_a_sketch_cache_speeds_the_bottleneck_pool_up() -> None:
    profile, mix = _profile(), _mix("fixed:6")
    plain = analytic_capacity(profile, _dis(), mix, DEFAULTS)  # sketch 0.6 s, render 0.2 s a job
    assert plain == pytest.approx(1 / 0.6)
    assert analytic_capacity(profile, _dis(sketch_speedup=2.0), mix, DEFAULTS) == pytest.approx(1 / 0.3)
    assert analytic_capacity(profile, _dis(render_speedup=2.0), mix, DEFAULTS) == pytest.approx(plain)
    recs = simulate(profile, _dis(sketch_speedup=2.0), PoissonArrivals(rate=0.1), mix, DEFAULTS, max_requests=50)
    sketch = [r.timeline["sketch_end"] - r.timeline["encode_start"] for r in recs]
    assert max(sketch) == pytest.approx(0.3)


def test_plan_spec_puts_the_speedups_on_its_candidates() -> None:
    spec = PlanSpec(
        budget={"g": 3}, arrival=PoissonArrivals(rate=1.0), mix=_mix("fixed:6"), cache_speedup={"sketch": 1.5}
    )
    for c in enumerate_candidates(_profile(), spec):
        if c.layout == "disaggregated":
            assert (c.sketch.cache_speedup, c.render.cache_speedup) == (1.5, 1.0)
        else:
            assert c.colocated.cache_speedup == 1.0


def test_load_switch_moves_work_to_the_render_pool_when_sketch_bound() -> None:
    """Past the sketch pool's capacity at the adaptive step, `load` caps sketches and keeps more jobs in SLO."""
    profile = _profile()
    arrival = PoissonArrivals(rate=2.0)  # adaptive needs 0.6 s of sketch a job: 1.2 of one replica's capacity
    slo = SloPolicy(slo_s=3.0)
    runs = {}
    for switch in ("adaptive", "load"):
        recs = simulate(profile, _dis(), arrival, _mix(switch), DEFAULTS, max_requests=400, seed=3, slo=slo)
        runs[switch] = recs
    adaptive, load = runs["adaptive"], runs["load"]
    assert {r.switch_step for r in adaptive} == {6}
    assert {r.switch_reason for r in load} >= {"balance"}
    assert min(r.switch_step for r in load) >= 2  # the floor: 20% of 10 steps
    assert sum(r.switch_step for r in load) < sum(r.switch_step for r in adaptive)
    attain = {k: summarize(v).slo_attainment for k, v in runs.items()}
    assert attain["load"] > attain["adaptive"]
    again = simulate(profile, _dis(), arrival, _mix("load"), DEFAULTS, max_requests=400, seed=3, slo=slo)
    assert [r.switch_step for r in again] == [r.switch_step for r in load]  # deterministic


def test_the_floor_bounds_the_simulated_caps() -> None:
    recs = simulate(
        _profile(),
        _dis(),
        PoissonArrivals(rate=4.0),
        _mix("load"),
        DEFAULTS,
        max_requests=200,
        seed=1,
        slo=SloPolicy(slo_s=1.0),
        load_switch=LoadSwitchConfig(floor_fraction=0.5),
    )
    assert min(r.switch_step for r in recs) == 5
