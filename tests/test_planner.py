"""The planner's simulator against analytic answers, the search, and the emitted Serve config."""

from __future__ import annotations

from pathlib import Path

import pytest

from srserve.engine.request import RequestDefaults
from srserve.planner.measure import CPU_KIND, fit_profile
from srserve.planner.profile import DeviceKind, Profile, ShapeCosts
from srserve.planner.search import PlanSpec, analytic_capacity, enumerate_candidates, plan
from srserve.planner.serve_config import serve_config_yaml
from srserve.planner.simulator import ClusterLayout, PoolSpec, simulate
from srserve.serving.config import DeployFile
from srserve.workload.arrivals import ClosedLoop, PoissonArrivals
from srserve.workload.mix import RequestClass, RequestMix
from srserve.workload.plan import SloPolicy
from srserve.workload.records import RequestRecord
from srserve.workload.stats import steady_window, summarize

DERIVED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "profile_wan21_a100_derived.json"
DEFAULTS = RequestDefaults(width=64, height=64, num_frames=17, num_inference_steps=10)


def _profile(large: float = 0.1, small: float = 0.05, host_cores: float | None = None, **kinds: float) -> Profile:
    """Kinds named in `kinds` run `factor` times slower than the base kind `g`."""
    base = ShapeCosts(encode_s=0.0, large_step_s=large, small_step_s=small, decode_s=0.0)
    shapes = {"g": {"64x64x17": base}}
    for name, factor in kinds.items():
        shapes[name] = {
            "64x64x17": base.model_copy(update={"large_step_s": large * factor, "small_step_s": small * factor})
        }
    return Profile(
        source="derived",
        description="test",
        model_pair="tiny",
        defaults=DEFAULTS,
        kinds={k: DeviceKind(name=k, shapes=v) for k, v in shapes.items()},
        host_cores=host_cores,
    )


def _mix(k: int) -> RequestMix:
    return RequestMix.single(switch=f"fixed:{k}")


def _dis(s: int, r: int, kind: str = "g", render_kind: str | None = None) -> ClusterLayout:
    return ClusterLayout(
        layout="disaggregated",
        sketch=PoolSpec(kind=kind, replicas=s),
        render=PoolSpec(kind=render_kind or kind, replicas=r),
    )


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    # One colocated replica, deterministic service D = 4*0.1 + 6*0.05 = 0.7 s, Poisson at rho = 0.6:
    # the M/D/1 mean wait is rho * D / (2 (1 - rho)).
    d, rho = 0.7, 0.6
    cluster = ClusterLayout(layout="colocated", colocated=PoolSpec(kind="g", replicas=1))
    recs = simulate(_profile(), cluster, PoissonArrivals(rate=rho / d), _mix(4), DEFAULTS, max_requests=30000, seed=1)
    s = summarize(recs)
    assert s.queue_s["colocated"].mean == pytest.approx(rho * d / (2 * (1 - rho)), rel=0.05)
    assert s.utilisation["colocated"] == pytest.approx(rho, rel=0.03)
    assert s.latency_s.min == pytest.approx(d)


@pytest.mark.parametrize(("s", "r", "k"), [(1, 1, 4), (2, 1, 8), (1, 3, 1), (3, 2, 5)])
def test_deterministic_pipeline_throughput_is_the_bottleneck_rate(s: int, r: int, k: int) -> None:
    # Saturated (closed loop, many clients): throughput -> min(s / D_sketch, r / D_render).
    d_sketch, d_render = k * 0.1, (10 - k) * 0.05
    recs = simulate(_profile(), _dis(s, r), ClosedLoop(concurrency=24), _mix(k), DEFAULTS, max_requests=3000)
    bound = min(s / d_sketch, r / d_render)
    assert summarize(recs).throughput_rps == pytest.approx(bound, rel=0.02)
    assert analytic_capacity(_profile(), _dis(s, r), _mix(k), DEFAULTS) == pytest.approx(bound)


def test_unloaded_latency_adds_stages_and_delays() -> None:
    prof = _profile()
    prof.delays.dispatch_s, prof.delays.handoff_s, prof.delays.completion_s = 0.01, 0.02, 0.03
    recs = simulate(prof, _dis(1, 1), ClosedLoop(concurrency=1), _mix(4), DEFAULTS, max_requests=3)
    assert [r.latency for r in recs] == pytest.approx([0.01 + 0.4 + 0.02 + 0.3 + 0.03] * 3)


def test_processor_sharing_on_a_cpu_host() -> None:
    # Two colocated replicas on one core: two simultaneous 0.7 s jobs both finish at 1.4 s.
    cluster = ClusterLayout(layout="colocated", colocated=PoolSpec(kind="g", replicas=2))
    recs = simulate(_profile(host_cores=1.0), cluster, ClosedLoop(concurrency=2), _mix(4), DEFAULTS, max_requests=2)
    assert [r.latency for r in recs] == pytest.approx([1.4, 1.4])
    # Three busy replicas on two cores run at 2/3 speed: saturated throughput is 2 cores / 0.7 s.
    cluster3 = ClusterLayout(layout="colocated", colocated=PoolSpec(kind="g", replicas=3))
    recs = simulate(_profile(host_cores=2.0), cluster3, ClosedLoop(concurrency=9), _mix(4), DEFAULTS, max_requests=900)
    assert summarize(recs).throughput_rps == pytest.approx(2 / 0.7, rel=0.02)
    # The rest of the cluster takes 0.5 cores idle plus 0.25 per busy replica: two busy replicas
    # share 2 - 0.5 - 0.5 = 1 core, so both finish at 1.4 s again.
    prof = _profile(host_cores=2.0)
    prof.background_cpu_idle, prof.background_cpu_per_busy_replica = 0.5, 0.25
    recs = simulate(prof, cluster, ClosedLoop(concurrency=2), _mix(4), DEFAULTS, max_requests=2)
    assert [r.latency for r in recs] == pytest.approx([1.4, 1.4])


def test_router_holds_jobs_beyond_max_ongoing() -> None:
    # 10 jobs at once on a replica that takes 4: the rest wait in the router, FIFO; all finish.
    cluster = ClusterLayout(layout="colocated", colocated=PoolSpec(kind="g", replicas=1, max_ongoing=4))
    recs = simulate(_profile(), cluster, ClosedLoop(concurrency=10), _mix(4), DEFAULTS, max_requests=10)
    ends = sorted(r.timeline["finished"] for r in recs)
    assert ends == pytest.approx([0.7 * (i + 1) for i in range(10)])


def test_adaptive_switch_needs_and_uses_a_distribution() -> None:
    adaptive = RequestMix(classes=[RequestClass(switch="adaptive", switch_steps={2: 0.5, 6: 0.5})])
    recs = simulate(_profile(), _dis(1, 1), ClosedLoop(concurrency=1), adaptive, DEFAULTS, max_requests=400)
    steps = [r.switch_step for r in recs]
    assert set(steps) == {2, 6} and 0.4 < steps.count(2) / len(steps) < 0.6
    with pytest.raises(ValueError, match="distribution"):
        simulate(
            _profile(),
            _dis(1, 1),
            ClosedLoop(concurrency=1),
            RequestMix.single(switch="adaptive"),
            DEFAULTS,
            max_requests=1,
        )


def test_search_picks_the_balanced_split_and_respects_memory() -> None:
    # Sketch work 0.8 s vs render 0.1 s per request: 8 sketch : 1 render balances 9 GPUs.
    spec = PlanSpec(
        budget={"g": 9},
        arrival=PoissonArrivals(rate=8.0),
        mix=_mix(8),
        requests=1500,
        slo=SloPolicy(scale=3.0),
        layouts=("disaggregated",),
    )
    results, slo = plan(_profile(), spec, DEFAULTS)
    best = results[0].cluster
    assert (best.sketch.replicas, best.render.replicas) == (8, 1)
    assert slo.unloaded_s["default"] == pytest.approx(0.9)
    assert results[0].summary.slo_attainment > 0.9
    # A slow second kind renders fine, but cannot hold the sketch model.
    prof = _profile(slow=4.0)
    prof.kinds["slow"].memory_gib = 24
    prof.kinds["g"].memory_gib = 80
    prof.role_memory_gib = {"large": 36, "text_encoder": 11, "small": 8, "vae": 10}
    spec2 = PlanSpec(budget={"g": 2, "slow": 4}, arrival=PoissonArrivals(rate=1.0), mix=_mix(5), requests=200)
    cands = enumerate_candidates(prof, spec2)
    assert all(c.sketch.kind == "g" for c in cands if c.layout == "disaggregated")
    assert {c.colocated.kind for c in cands if c.layout == "colocated"} == {"g"}
    assert any(c.layout == "disaggregated" and c.render.kind == "slow" for c in cands)


def test_emitted_serve_config_loads_as_a_deploy_file(tmp_path: Path) -> None:
    prof = Profile.read(DERIVED)
    cluster = _dis(3, 5, kind="H100", render_kind="L40S")
    text = serve_config_yaml(
        cluster, prof, header="planned", model={"family": "wan2.1", "sketch_path": "/m/14b", "render_path": "/m/1.3b"}
    )
    path = tmp_path / "planned.yaml"
    path.write_text(text)
    spec = DeployFile.from_yaml(path)
    assert spec.serving.layout == "disaggregated"
    assert spec.serving.sketch_pool.num_replicas == 3 and spec.serving.render_pool.num_replicas == 5
    assert spec.serving.sketch_pool.ray_actor_options["accelerator_type"] == "H100"
    assert spec.serving.render_pool.ray_actor_options == {"num_cpus": 1, "num_gpus": 1, "accelerator_type": "L40S"}
    colocated = tmp_path / "colocated.yaml"
    colocated.write_text(
        serve_config_yaml(ClusterLayout(layout="colocated", colocated=PoolSpec(kind="A100", replicas=4)), prof)
    )
    spec = DeployFile.from_yaml(colocated)
    assert spec.serving.layout == "colocated" and spec.serving.colocated_pool.num_replicas == 4


def test_derived_profile_reproduces_the_published_figures() -> None:
    prof = Profile.read(DERIVED)
    assert prof.source == "derived"
    a100 = prof.costs("A100", 832, 480, 81)
    # 14B alone, 1.3B alone and SRDiffusion at its implied switch step, as published (948 / 192 / 344 s).
    assert a100.colocated_s(50, 50) == pytest.approx(948, rel=1e-6)
    assert a100.colocated_s(50, 0) == pytest.approx(192, rel=1e-6)
    k = sum(k * p for k, p in prof.adaptive_switch[50].items())
    assert a100.colocated_s(50, 0) + k * (a100.large_step_s - a100.small_step_s) == pytest.approx(344, rel=0.01)
    assert not prof.fits("A10G", ("large", "text_encoder")) and prof.fits("A10G", ("small", "vae"))


def test_steady_state_window_measures_capacity_and_offered_load() -> None:
    cluster = ClusterLayout(layout="colocated", colocated=PoolSpec(kind="g", replicas=1))
    for rate, expected in ((0.5 / 0.7, 0.5 / 0.7), (2 / 0.7, 1 / 0.7)):  # under and over capacity
        recs = simulate(
            _profile(),
            cluster,
            PoissonArrivals(rate=rate),
            _mix(4),
            DEFAULTS,
            max_requests=4000,
            seed=3,
            slo=SloPolicy(slo_s=5.0),
        )
        s = summarize(recs, 1, {"colocated": 1}, steady_window(recs))
        assert s.throughput_rps == pytest.approx(expected, rel=0.04)
        if rate < 1 / 0.7:
            assert s.slo_attainment > 0.99 and s.goodput_rps == pytest.approx(rate, rel=0.05)
        else:
            assert s.utilisation["colocated"] == pytest.approx(1.0, abs=0.01) and s.slo_attainment < 0.2


def test_fit_profile_recovers_stage_costs_from_sequential_timelines() -> None:
    """Timelines built from known costs (binary fractions, so sums are exact) give those costs back."""
    steps, encode, large, small, decode = 8, 0.5, 0.25, 0.125, 0.375
    sketch_over, render_over, colocated_over = 0.0625, 0.03125, 0.015625
    dispatch, handoff, completion = 0.125, 0.0625, 0.03125
    records = []
    for i, k in enumerate((0, 2, 4, 6, 8)):
        t = {"submitted": 10.0 * i}
        t["encode_start"] = t["submitted"] + dispatch
        t["encode_end"] = t["sketch_start"] = t["encode_start"] + encode
        t["sketch_end"] = t["sketch_start"] + k * large + sketch_over
        t["render_start"] = t["sketch_end"] + handoff
        t["decode_start"] = t["render_start"] + render_over + (steps - k) * small
        t["render_end"] = t["decode_start"] + decode
        t["finished"] = t["render_end"] + completion
        rec = RequestRecord(index=i, request_class="c", status="completed", timeline=t, switch_step=k)
        rec.replicas = {"sketch": "s", "render": "r"}
        colocated = RequestRecord(index=10 + i, request_class="c", status="completed", switch_step=k)
        colocated.replicas = {"colocated": "c"}
        colocated.timeline = {**t, "render_end": t["render_end"] + colocated_over - handoff}
        records += [rec, colocated]
    cpu = {"replica_cpu_demand": 1.0, "background_cpu_idle": 0.0, "background_cpu_per_busy_replica": 0.0}
    profile = fit_profile(records, cpu, 64, 64, 17, steps, 2.0, "synthetic", "tiny")
    costs = profile.kinds[CPU_KIND].shapes["64x64x17"]
    assert costs.encode_s == encode and costs.decode_s == decode
    assert costs.large_step_s == pytest.approx(large) and costs.small_step_s == pytest.approx(small)
    assert costs.sketch_overhead_s == pytest.approx(sketch_over)
    assert costs.render_overhead_s == pytest.approx(render_over)
    assert costs.colocated_overhead_s == pytest.approx(sketch_over + render_over + colocated_over)
    assert profile.delays.dispatch_s == dispatch and profile.delays.handoff_s == handoff
    assert profile.delays.completion_s == pytest.approx(completion - (colocated_over - handoff) / 2)
