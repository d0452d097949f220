"""The one stage timeline (srserve.workload.timeline) and the pipeline efficiency built on it
(srserve.analysis.timeline): stage spans, and a busy fraction that never exceeds 1."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from srserve.analysis.timeline import (
    JobTimeline,
    busy_fraction,
    gantt,
    idle_within,
    job_timeline,
    pipeline_report,
)
from srserve.workload.records import RequestRecord
from srserve.workload.timeline import MARKS, STAGES, Stage, Timeline

FULL = {
    "submitted": 100.0,
    "encode_start": 101.0,
    "encode_end": 101.5,
    "sketch_start": 101.5,
    "sketch_end": 104.0,
    "render_start": 104.25,
    "decode_start": 106.0,
    "render_end": 107.0,
    "finished": 107.5,
}


def test_marks_and_stages_follow_the_job_through_the_pools() -> None:
    assert tuple(FULL) == MARKS
    assert [s.name for s in STAGES] == ["queue", "encode", "sketch", "handoff", "render", "decode"]
    assert STAGES[3] == Stage("handoff", "sketch_end", "render_start")
    for stage in STAGES:  # each stage runs forward along the marks
        assert MARKS.index(stage.start) < MARKS.index(stage.end)


def test_spans_total_and_busy_intervals() -> None:
    t = Timeline.of(FULL)
    assert t.spans() == {"queue": 1.0, "encode": 0.5, "sketch": 2.5, "handoff": 0.25, "render": 1.75, "decode": 1.0}
    assert t.total == 7.5
    assert t.sketch_interval == (101.0, 104.0) and t.sketch_busy == 3.0  # encode runs on the sketch replica
    assert t.render_interval == (104.25, 107.0) and t.render_busy == 2.75


def test_a_job_encoded_elsewhere_queues_until_its_sketch_starts() -> None:
    marks = {k: v for k, v in FULL.items() if not k.startswith("encode")}
    t = Timeline.of(marks)
    assert t.span("queue") == 1.5
    assert t.span("encode") is None and "encode" not in t.spans()
    assert t.sketch_interval == (101.5, 104.0)


def test_missing_or_reversed_stamps_give_none() -> None:
    t = Timeline.of({"submitted": 10.0, "encode_start": 9.0, "sketch_end": 12.0})
    assert t.between("submitted", "encode_start") is None  # clocks out of order: no negative span
    assert t.between("submitted", "finished") is None
    assert t.total is None and t.render_busy is None
    assert t.span("queue") is None and t.spans() == {}
    with pytest.raises(KeyError):
        t.span("export")


def test_of_copies_so_later_stamps_do_not_leak_in() -> None:
    marks = {"submitted": 1.0}
    t = Timeline.of(marks)
    marks["finished"] = 2.0
    assert t.total is None


def test_records_read_their_stamps_through_the_timeline() -> None:
    rec = RequestRecord(index=0, request_class="c", status="completed", timeline=dict(FULL))
    rec.replicas = {"sketch": "s1", "render": "r1"}
    assert rec.latency == 7.5
    assert rec.durations() == {**Timeline.of(FULL).spans(), "completion": 0.5}
    assert rec.queue_waits() == {"sketch": 1.0, "render": 0.25}
    assert rec.busy_intervals() == [("sketch", "s1", 101.0, 104.0), ("render", "r1", 104.25, 107.0)]
    colocated = RequestRecord(index=1, request_class="c", status="completed", timeline=dict(FULL))
    colocated.replicas = {"colocated": "c1"}
    assert colocated.busy_intervals() == [("colocated", "c1", 101.0, 107.0)]
    assert colocated.queue_waits() == {"colocated": 1.0}


# -- the bottleneck's busy fraction ----------------------------------------------------------------


def _job(i: int, sketch: tuple[float, float], render: tuple[float, float], replicas: dict[str, str]) -> JobTimeline:
    marks = {
        "submitted": sketch[0],
        "encode_start": sketch[0],
        "sketch_start": sketch[0],
        "sketch_end": sketch[1],
        "render_start": render[0],
        "decode_start": render[1],
        "render_end": render[1],
        "finished": render[1],
    }
    return job_timeline({"id": f"j{i}", "timeline": marks, "switch_step": 5, "replicas": replicas})


def packed(sketch_s: list[float], render_s: list[float]) -> list[JobTimeline]:
    """One sketch and one render replica, each starting a job the moment it can: the best schedule."""
    jobs, sketch_free, render_free = [], 0.0, 0.0
    for i, (ts, tr) in enumerate(zip(sketch_s, render_s, strict=True)):
        s = (sketch_free, sketch_free + ts)
        start = max(s[1], render_free)
        r = (start, start + tr)
        sketch_free, render_free = s[1], r[1]
        jobs.append(_job(i, s, r, {"sketch": "s0", "render": "r0"}))
    return jobs


def test_idle_within_counts_gaps_once_and_ignores_what_is_outside() -> None:
    assert idle_within([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)], (0.0, 10.0)) == 6.0
    assert idle_within([(-5.0, 1.0), (9.0, 20.0)], (0.0, 10.0)) == 8.0
    assert idle_within([], (0.0, 4.0)) == 4.0


def test_an_idle_replica_counts_against_the_pool() -> None:
    assert busy_fraction({"a": [(0.0, 10.0)]}, 1, (0.0, 10.0)) == 1.0
    assert busy_fraction({"a": [(0.0, 10.0)]}, 2, (0.0, 10.0)) == 0.5
    with pytest.raises(ValueError):
        busy_fraction({"a": [(0.0, 1.0)], "b": [(0.0, 1.0)]}, 1, (0.0, 1.0))


interval = st.tuples(
    st.floats(0, 1000, allow_nan=False, allow_infinity=False), st.floats(0, 50, allow_nan=False, allow_infinity=False)
).map(lambda p: (p[0], p[0] + p[1]))


@settings(max_examples=300, deadline=None)
@given(
    by_replica=st.dictionaries(st.sampled_from("abcd"), st.lists(interval, min_size=1, max_size=12), min_size=1),
    extra_replicas=st.integers(0, 3),
)
def test_busy_fraction_never_exceeds_one(by_replica: dict[str, list[tuple[float, float]]], extra_replicas: int) -> None:
    everything = [iv for ivs in by_replica.values() for iv in ivs]
    window = (min(a for a, _ in everything), max(b for _, b in everything))
    assume(window[1] > window[0])
    fraction = busy_fraction(by_replica, len(by_replica) + extra_replicas, window)
    assert 0.0 <= fraction <= 1.0


stage_seconds = st.floats(0.01, 5.0, allow_nan=False, allow_infinity=False)


@st.composite
def any_run(draw: st.DrawFn) -> tuple[list[JobTimeline], dict[str, int] | None]:
    """Jobs with arbitrary stamps (in order within a job, overlapping freely across jobs) on a few replicas."""
    jobs = []
    for i in range(draw(st.integers(2, 12))):
        t = [draw(st.floats(0, 100, allow_nan=False))]
        for _ in range(3):
            t.append(t[-1] + draw(stage_seconds))
        replicas = {"sketch": draw(st.sampled_from(["s0", "s1"])), "render": draw(st.sampled_from(["r0", "r1", "r2"]))}
        jobs.append(_job(i, (t[0], t[1]), (t[2], t[3]), replicas))
    configured = draw(st.none() | st.fixed_dictionaries({"sketch": st.integers(0, 3), "render": st.integers(0, 4)}))
    return jobs, configured


@settings(max_examples=300, deadline=None)
@given(run=any_run())
def test_pipeline_efficiency_never_exceeds_one(run: tuple[list[JobTimeline], dict[str, int] | None]) -> None:
    jobs, configured = run
    report = pipeline_report(jobs, configured)
    assert 0.0 < report.bottleneck_busy_fraction <= 1.0
    assert report.throughput_rps <= report.capacity_rps
    assert report.busy_s <= report.replicas * report.window_s


dyadic_seconds = st.integers(1, 320).map(lambda k: k / 64)  # exact in binary: no rounding in the sums


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 20), sketch_s=dyadic_seconds, render_s=dyadic_seconds)
def test_a_perfectly_packed_pipeline_is_fully_efficient(n: int, sketch_s: float, render_s: float) -> None:
    """Equal jobs, each stage started the moment it can: the slower pool never waits."""
    report = pipeline_report(packed([sketch_s] * n, [render_s] * n), {"sketch": 1, "render": 1})
    assert report.bottleneck == ("render" if render_s > sketch_s else "sketch")
    assert report.bottleneck_busy_fraction == 1.0


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(2, 20))
def test_uneven_jobs_packed_behind_a_slower_render_pool_are_fully_efficient(data: st.DataObject, n: int) -> None:
    sketch_s = data.draw(st.lists(dyadic_seconds, min_size=n, max_size=n))
    floor = max(sketch_s)  # every render at least as long as any sketch: a render never waits for its input
    render_s = data.draw(st.lists(st.integers(round(64 * floor), 640).map(lambda k: k / 64), min_size=n, max_size=n))
    report = pipeline_report(packed(sketch_s, render_s))
    assert report.bottleneck_busy_fraction == 1.0


def test_packed_render_bound_pipeline_is_exactly_one_and_render_is_the_bottleneck() -> None:
    report = pipeline_report(packed([0.5] * 8, [0.75] * 8), {"sketch": 1, "render": 1})
    assert report.bottleneck == "render" and report.replicas == 1
    assert report.bottleneck_busy_fraction == 1.0
    assert report.window_s == 8 * 0.75 and report.throughput_rps == report.capacity_rps == 1 / 0.75


def test_contention_that_slowed_the_first_render_no_longer_reads_above_one() -> None:
    """The demo's case: the first render ran slow (contending with sketches), the rest packed. Steady
    throughput over the mean render time came to 1.08; the busy fraction of the same run is 1."""
    render = [1.2] + [0.8] * 7
    jobs = packed([0.3] * 8, render)
    ends = sorted(j.busy("render")[1] for j in jobs)
    old_ratio = ((len(ends) - 1) / (ends[-1] - ends[0])) / (1 / (sum(render) / len(render)))
    assert old_ratio > 1.0
    assert pipeline_report(jobs).bottleneck_busy_fraction == 1.0


def test_a_gap_before_the_bottleneck_shows_up_as_lost_efficiency() -> None:
    # render 1 s per job, but each job reaches it 0.5 s after the previous render ended
    jobs = [
        _job(i, (2.0 * i, 2.0 * i + 0.5), (2.0 * i + 0.5, 2.0 * i + 1.5), {"sketch": "s", "render": "r"})
        for i in range(4)
    ]
    report = pipeline_report(jobs)
    assert report.bottleneck == "render"
    assert report.window_s == pytest.approx(7.0)
    assert report.bottleneck_busy_fraction == pytest.approx(4.0 / 7.0)


def test_unseen_configured_replicas_are_idle_capacity() -> None:
    jobs = packed([0.25] * 4, [1.0] * 4)
    report = pipeline_report(jobs, {"sketch": 1, "render": 2})
    assert report.bottleneck == "render" and report.replicas == 2
    assert report.bottleneck_busy_fraction == 0.5


def test_a_job_without_a_render_interval_is_refused() -> None:
    jobs = packed([0.5] * 2, [1.0] * 2)
    unfinished = job_timeline({"id": "x", "timeline": {"submitted": 0.0, "sketch_start": 0.0, "sketch_end": 1.0}})
    with pytest.raises(ValueError, match="no render interval"):
        pipeline_report([*jobs, unfinished])


def test_gantt_draws_one_row_per_request_in_sketch_order() -> None:
    jobs = packed([0.5] * 3, [1.0] * 3)
    rows = gantt(list(reversed(jobs)), width=40).splitlines()
    assert len(rows) == 4
    charts = [row[-40:] for row in rows[1:]]
    assert charts[0].startswith("s") and "r" in charts[0]
    starts = [chart.index("s") for chart in charts]
    assert all(a < b for a, b in itertools.pairwise(starts))
