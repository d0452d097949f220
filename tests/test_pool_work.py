"""A pool's queue of work in GPU-seconds, from real job-store records (PostgreSQL, no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from srserve.serving.control.jobs import Job, JobState
from srserve.serving.control.pricing.pool_work import estimate_pool_work, expected_sketch_steps, measure_stage_times
from srserve.serving.control.store.job_store import JobStore, ProgressUpdate
from tests.store_helpers import LIMITS

T0 = 1_000.0
S = JobState


def _request(switch: dict) -> dict:
    return {"prompt": "x", "num_inference_steps": 20, "switch": switch}


FIXED5 = {"kind": "fixed", "step": 5, "fraction": None, "tau": 0.01, "min_step": None, "max_step": None}
ADAPTIVE = {"kind": "adaptive", "step": None, "fraction": None, "tau": 0.01, "min_step": None, "max_step": None}


async def _jobs_in_store(dsn: str) -> dict[str, Job]:
    """Real store records: one finished job (its stamps give the step times) and jobs in every stage."""
    store = JobStore(dsn)
    await store.migrate()

    async def new(job_id: str) -> int:
        await store.create(job_id, _request(FIXED5), 20, None, "o", 30, LIMITS)
        return (await store.begin_attempt(job_id, "sketch", "o", 3)).fence

    def up(job_id, fence, state=None, step=None, total=None, stamps=None):
        return ProgressUpdate(job_id, fence, state, step, total, stamps or {})

    fence = await new("done")
    stamps = {
        "encode_start": T0,
        "encode_end": T0 + 0.5,  # encode 0.5 s
        "sketch_start": T0 + 0.5,
    }
    await store.apply_progress([up("done", fence, S.ENCODING, 0, 1, stamps), up("done", fence, S.SKETCHING, 5, 5)])
    await store.record_handoff("done", fence, "k", 10, 5, {"sketch_end": T0 + 1.5})  # 5 steps in 1 s: 0.2 s/step
    fence = (await store.begin_attempt("done", "render", "o", 3)).fence
    await store.apply_progress(
        [
            up("done", fence, S.RENDERING, 5, 20, {"render_start": T0 + 2.0}),
            up("done", fence, S.DECODING, 20, 20, {"decode_start": T0 + 3.5}),  # 15 steps in 1.5 s: 0.1 s/step
        ]
    )
    await store.complete("done", fence, "v", 3, {"render_end": T0 + 4.0}, None)  # decode 0.5 s
    await new("queued")
    fence = await new("sketching")
    stamps = {"encode_start": T0, "encode_end": T0 + 0.5}
    await store.apply_progress(
        [up("sketching", fence, S.ENCODING, 0, 1), up("sketching", fence, S.SKETCHING, 2, 5, stamps)]
    )
    for job_id in ("handed", "rendering"):
        fence = await new(job_id)
        await store.apply_progress([up(job_id, fence, S.SKETCHING, 5, 5)])
        await store.record_handoff(job_id, fence, "k", 10, 5, {})
    fence = (await store.begin_attempt("rendering", "render", "o", 3)).fence
    await store.apply_progress([up("rendering", fence, S.RENDERING, 12, 20)])
    jobs = await store.jobs_for_work()
    await store.close()
    return {j.id: j for j in jobs}


@pytest.fixture
def board(store_dsn: str) -> dict[str, Job]:
    return asyncio.run(_jobs_in_store(store_dsn))


def test_measured_stage_times_come_from_the_stamps(board: dict[str, Job]) -> None:
    times = measure_stage_times(board.values(), now=T0 + 10)
    assert times.encode_s == pytest.approx(0.5)
    assert times.sketch_step_s == pytest.approx(0.2)
    assert times.render_step_s == pytest.approx(0.1)
    assert times.decode_s == pytest.approx(0.5)


def test_each_pool_counts_remaining_steps_times_step_time(board: dict[str, Job]) -> None:
    jobs = board.values()
    sketch = estimate_pool_work(jobs, "sketch", now=T0 + 10)
    # queued: 5 steps + encode; sketching: 3 steps left, already encoded.
    assert (sketch.jobs, sketch.remaining_steps, sketch.unpriced_steps) == (2, 8, 0)
    assert sketch.work_s == pytest.approx(8 * 0.2 + 0.5)
    assert sketch.step_s == pytest.approx(0.2)
    render = estimate_pool_work(jobs, "render", now=T0 + 10)
    # handed off: 15 steps + decode; rendering at step 12: 8 steps + decode.
    assert (render.jobs, render.remaining_steps) == (2, 23)
    assert render.work_s == pytest.approx(23 * 0.1 + 2 * 0.5)
    # upstream (queued + sketching) will bring 2 x (15 steps + decode) to the render pool.
    assert render.incoming_s == pytest.approx(2 * (15 * 0.1 + 0.5))
    text = estimate_pool_work(jobs, "text", now=T0 + 10)
    assert (text.jobs, text.work_s) == (1, pytest.approx(0.5))
    colocated = estimate_pool_work(jobs, "colocated", now=T0 + 10)
    # queued 5 + 15, sketching 3 + 15, handed off 15, rendering 8: every stage runs in the one replica.
    assert colocated.jobs == 4 and colocated.remaining_steps == 20 + 18 + 15 + 8


def test_sketch_pool_without_the_text_encoder_leaves_encode_out(board: dict[str, Job]) -> None:
    with_encode = estimate_pool_work(board.values(), "sketch", now=T0 + 10)
    without = estimate_pool_work(board.values(), "sketch", now=T0 + 10, include_encode=False)
    assert with_encode.work_s - without.work_s == pytest.approx(0.5)


def test_before_any_measurement_steps_are_unpriced(store_dsn: str) -> None:
    async def fresh() -> list[Job]:
        store = JobStore(store_dsn)
        await store.migrate()
        for i in range(3):
            await store.create(f"j{i}", _request(FIXED5), 20, None, "o", 30, ())
        jobs = await store.jobs_for_work()
        await store.close()
        return jobs

    work = estimate_pool_work(asyncio.run(fresh()), "sketch", now=T0)
    assert (work.jobs, work.remaining_steps, work.unpriced_steps, work.work_s) == (3, 15, 15, 0.0)
    assert work.as_metrics()["srserve_pool_unpriced_steps"] == 15.0


def test_expected_sketch_steps_per_switch_kind(board: dict[str, Job]) -> None:
    job = board["queued"]
    assert expected_sketch_steps(job, None) == 5
    job.request = _request({**FIXED5, "step": None, "fraction": 0.3})
    assert expected_sketch_steps(job, None) == 6
    job.request = _request(ADAPTIVE)
    assert expected_sketch_steps(job, None) == 12  # unmeasured: the upper bound, 60% of 20
    assert expected_sketch_steps(job, 0.25) == 5  # the observed adaptive switch fraction
    assert expected_sketch_steps(job, 0.01) == 2  # never below the lower bound, 10% of 20


def test_terminal_jobs_are_not_work_and_unknown_pools_are_refused(board: dict[str, Job]) -> None:
    assert estimate_pool_work([board["done"]], "render", now=T0 + 10).jobs == 0
    with pytest.raises(ValueError, match="unknown pool"):
        estimate_pool_work(board.values(), "decode", now=T0)


def test_pool_work_as_the_replicas_report_it(board: dict[str, Job]) -> None:
    out = estimate_pool_work(board.values(), "render", now=T0 + 10).as_metrics()
    assert out["srserve_pool_jobs"] == 2.0 and out["srserve_pool_remaining_steps"] == 23.0
    assert all(isinstance(v, float) for v in out.values())
