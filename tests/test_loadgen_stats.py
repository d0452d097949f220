"""The harness's statistics and load shapes: percentiles, SLO attainment, goodput, utilisation, arrivals."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srserve.workload.arrivals import (
    ClosedLoop,
    GammaArrivals,
    PoissonArrivals,
    TraceArrivals,
    open_loop_schedule,
    parse_arrival,
)
from srserve.workload.mix import RequestClass, RequestMix
from srserve.workload.plan import SloPolicy, open_loop_plan
from srserve.workload.records import RequestRecord
from srserve.workload.stats import Distribution, percentile, summarize, utilisation_series


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
    st.floats(0, 100),
)
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def test_percentile_edges() -> None:
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 99) == 99.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _record(
    i: int,
    submitted: float,
    start: float,
    sketch_end: float,
    render_start: float,
    end: float,
    slo: float | None = None,
    status: str = "completed",
) -> RequestRecord:
    timeline = {
        "submitted": submitted,
        "encode_start": start,
        "encode_end": start + 0.1,
        "sketch_start": start + 0.1,
        "sketch_end": sketch_end,
        "render_start": render_start,
        "decode_start": end - 0.1,
        "render_end": end,
        "finished": end,
    }
    return RequestRecord(
        index=i,
        request_class="c",
        status=status,
        timeline=timeline,
        switch_step=5,
        num_steps=20,
        replicas={"sketch": "s0", "render": "r0"},
        slo_s=slo,
    )


def test_summary_goodput_and_slo_attainment_by_hand() -> None:
    # Four requests over a 10 s window; latencies 2, 3, 4, 10; SLO 3.5 s; one more request rejected.
    recs = [
        _record(0, 0.0, 0.0, 1.0, 1.0, 2.0, slo=3.5),
        _record(1, 1.0, 1.0, 2.0, 2.5, 4.0, slo=3.5),
        _record(2, 2.0, 2.5, 4.0, 4.0, 6.0, slo=3.5),
        _record(3, 0.0, 6.0, 8.0, 8.0, 10.0, slo=3.5),
        RequestRecord(index=4, request_class="c", status="rejected", slo_s=3.5),
    ]
    s = summarize(recs, gpus=2, replicas_per_pool={"sketch": 1, "render": 1})
    assert s.requests == 5 and s.completed == 4 and s.rejected == 1
    assert s.window_s == pytest.approx(10.0)
    assert s.throughput_rps == pytest.approx(0.4)
    assert s.slo_attainment == pytest.approx(2 / 5)  # the rejected request misses its SLO too
    assert s.goodput_rps == pytest.approx(0.2)
    assert s.goodput_per_gpu == pytest.approx(0.1)
    assert s.latency_s.mean == pytest.approx(statistics.mean([2, 3, 4, 10]))
    assert s.latency_s.p50 == pytest.approx(3.5)
    assert s.latency_s.p99 == pytest.approx(float(np.percentile([2, 3, 4, 10], 99)))
    # Queue waits: sketch = start - submitted; render = render_start - sketch_end.
    assert s.queue_s["sketch"].mean == pytest.approx((0 + 0 + 0.5 + 6) / 4)
    assert s.queue_s["render"].mean == pytest.approx((0 + 0.5 + 0 + 0) / 4)
    # Busy: sketch [0,1] [1,2] [2.5,4] [6,8] = 5.5 s; render [1,2] [2.5,4] [4,6] [8,10] = 6.5 s.
    assert s.utilisation["sketch"] == pytest.approx(0.55)
    assert s.utilisation["render"] == pytest.approx(0.65)


def test_no_slo_means_no_goodput() -> None:
    s = summarize([_record(0, 0.0, 0.0, 1.0, 1.0, 2.0)])
    assert s.slo_attainment is None and s.goodput_rps is None


def test_utilisation_series_bins() -> None:
    recs = [_record(0, 0.0, 0.0, 1.0, 1.0, 2.0), _record(1, 0.0, 3.0, 4.0, 4.0, 4.0)]
    starts, series = utilisation_series(recs, 1.0, {"sketch": 1, "render": 1})
    assert starts == [0.0, 1.0, 2.0, 3.0]
    assert series["sketch"] == pytest.approx([1.0, 0.0, 0.0, 1.0])
    assert series["render"] == pytest.approx([0.0, 1.0, 0.0, 0.0])


def test_distribution_of_nothing_is_nan() -> None:
    d = Distribution.of([])
    assert d.count == 0 and math.isnan(d.p99)


def test_poisson_and_gamma_gaps_have_the_asked_rate_and_burstiness() -> None:
    rng = random.Random(0)
    for spec, cv in ((PoissonArrivals(rate=2.0), 1.0), (GammaArrivals(rate=2.0, cv=3.0), 3.0)):
        gaps = spec.gaps(rng)
        xs = [next(gaps) for _ in range(40000)]
        mean = statistics.mean(xs)
        assert mean == pytest.approx(0.5, rel=0.05)
        assert statistics.stdev(xs) / mean == pytest.approx(cv, rel=0.08)


def test_open_loop_schedule_is_bounded_and_deterministic(tmp_path) -> None:
    spec = PoissonArrivals(rate=5.0)
    a = open_loop_schedule(spec, 50, None, seed=3)
    assert len(a) == 50 and a[0][0] == 0.0 and a == open_loop_schedule(spec, 50, None, seed=3)
    timed = open_loop_schedule(spec, None, 4.0, seed=3)
    assert timed and all(t <= 4.0 for t, _ in timed)
    with pytest.raises(ValueError):
        open_loop_schedule(spec, None, None, seed=0)
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"t": 1.5, "class": "big", "slo_s": 9}\n{"t": 0.5, "fields": {"num_inference_steps": 4}}\n')
    mix = RequestMix(classes=[RequestClass(name="small"), RequestClass(name="big", num_inference_steps=8)])
    plan = open_loop_plan(TraceArrivals(path=str(trace)), mix, None, None, seed=0, slo=SloPolicy(slo_s=30))
    assert [p.offset_s for p in plan] == [0.5, 1.5]
    assert plan[0].fields["num_inference_steps"] == 4 and plan[0].slo_s == 30
    assert plan[1].request_class.name == "big" and plan[1].slo_s == 9


def test_slo_policy_precedence() -> None:
    cls = RequestClass(name="a")
    assert SloPolicy(scale=2.0, unloaded_s={"a": 1.5}).for_request(cls) == 3.0
    assert SloPolicy(slo_s=7.0).for_request(cls) == 7.0
    assert SloPolicy(slo_s=7.0).for_request(RequestClass(name="b", slo_s=2.0)) == 2.0
    assert SloPolicy(slo_s=7.0).for_request(cls, explicit=1.0) == 1.0


def test_parse_arrival() -> None:
    assert parse_arrival("poisson:2") == PoissonArrivals(rate=2.0)
    assert parse_arrival("gamma:1:4") == GammaArrivals(rate=1.0, cv=4.0)
    assert parse_arrival("closed:3:0.5") == ClosedLoop(concurrency=3, think_s=0.5)
    assert parse_arrival("trace:/x.jsonl") == TraceArrivals(path="/x.jsonl")
    for bad in ("poisson", "gamma:1", "uniform:3", "poisson:-1"):
        with pytest.raises(ValueError):
            parse_arrival(bad)


def test_mix_classes_are_validated_by_the_request_model() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        RequestClass(num_frames=8)
    with pytest.raises(ValueError, match="unique"):
        RequestMix(classes=[RequestClass(), RequestClass()])
    mix = RequestMix(classes=[RequestClass(name="a", weight=3), RequestClass(name="b", weight=1)])
    rng = random.Random(0)
    picks = [mix.sample(rng).name for _ in range(4000)]
    assert picks.count("a") / len(picks) == pytest.approx(0.75, abs=0.03)


def test_replicas_per_pool_counts_a_queue_autoscaled_pool_at_its_maximum() -> None:
    from srserve.loadgen.shape import replicas_per_pool
    from srserve.serving.config import PoolConfig, QueueWorkAutoscaling, ServingConfig

    scaled = PoolConfig(num_replicas=None, queue_autoscaling=QueueWorkAutoscaling(min_replicas=1, max_replicas=3))
    config = ServingConfig(sketch_pool=PoolConfig(num_replicas=2), render_pool=scaled)
    assert replicas_per_pool(config) == {"sketch": 2, "render": 3}
