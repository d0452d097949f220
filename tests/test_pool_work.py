"""A pool's queue of work in GPU-seconds, from real job-board records (JobBoardCore, no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from srserve.serving.control.jobs import JobState
from srserve.serving.job_board import JobBoardCore
from srserve.serving.ops.pool_work import estimate_pool_work, expected_sketch_steps, measure_stage_times

T0 = 1_000.0


def _request(switch: dict) -> dict:
    return {"prompt": "x", "num_inference_steps": 20, "switch": switch}


FIXED5 = {"kind": "fixed", "step": 5, "fraction": None, "tau": 0.01, "min_step": None, "max_step": None}
ADAPTIVE = {"kind": "adaptive", "step": None, "fraction": None, "tau": 0.01, "min_step": None, "max_step": None}


async def _board() -> JobBoardCore:
    """A board with one finished job (its stamps give the step times) and jobs in every stage."""
    board = JobBoardCore()
    r = board.report
    await board.create("done", _request(FIXED5), 20, None)
    stamps = {
        "encode_start": T0,
        "encode_end": T0 + 0.5,  # encode 0.5 s
        "sketch_start": T0 + 0.5,
        "sketch_end": T0 + 1.5,  # 5 sketch steps in 1 s: 0.2 s/step
        "render_start": T0 + 2.0,
        "decode_start": T0 + 3.5,  # 15 render steps in 1.5 s: 0.1 s/step
    }
    await r("done", JobState.HANDED_OFF.value, 5, 20, stamps, ("sketch", "s1"), {"switch_step": 5})
    await r("done", JobState.DECODING.value, 20, 20)
    await board.complete("done", b"mp4", {"render_end": T0 + 4.0})  # decode 0.5 s
    await board.create("queued", _request(FIXED5), 20, None)
    await board.create("sketching", _request(FIXED5), 20, None)
    await r("sketching", JobState.SKETCHING.value, 2, 5, {"encode_start": T0, "encode_end": T0 + 0.5})
    await board.create("handed", _request(FIXED5), 20, None)
    await r("handed", JobState.HANDED_OFF.value, 5, 20, None, None, {"switch_step": 5})
    await board.create("rendering", _request(FIXED5), 20, None)
    await r("rendering", JobState.RENDERING.value, 12, 20, None, None, {"switch_step": 5})
    return board


def test_measured_stage_times_come_from_the_stamps() -> None:
    board = asyncio.run(_board())
    times = measure_stage_times(board.jobs.values(), now=T0 + 10)
    assert times.encode_s == pytest.approx(0.5)
    assert times.sketch_step_s == pytest.approx(0.2)
    assert times.render_step_s == pytest.approx(0.1)
    assert times.decode_s == pytest.approx(0.5)


def test_each_pool_counts_remaining_steps_times_step_time() -> None:
    board = asyncio.run(_board())
    jobs = board.jobs.values()
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


def test_sketch_pool_without_the_text_encoder_leaves_encode_out() -> None:
    board = asyncio.run(_board())
    with_encode = estimate_pool_work(board.jobs.values(), "sketch", now=T0 + 10)
    without = estimate_pool_work(board.jobs.values(), "sketch", now=T0 + 10, include_encode=False)
    assert with_encode.work_s - without.work_s == pytest.approx(0.5)


def test_before_any_measurement_steps_are_unpriced() -> None:
    async def fresh() -> JobBoardCore:
        board = JobBoardCore()
        for i in range(3):
            await board.create(f"j{i}", _request(FIXED5), 20, None)
        return board

    work = estimate_pool_work(asyncio.run(fresh()).jobs.values(), "sketch", now=T0)
    assert (work.jobs, work.remaining_steps, work.unpriced_steps, work.work_s) == (3, 15, 15, 0.0)
    assert work.as_metrics()["srserve_pool_unpriced_steps"] == 15.0


def test_expected_sketch_steps_per_switch_kind() -> None:
    board = asyncio.run(_board())
    job = board.jobs["queued"]
    assert expected_sketch_steps(job, None) == 5
    job.request = _request({**FIXED5, "step": None, "fraction": 0.3})
    assert expected_sketch_steps(job, None) == 6
    job.request = _request(ADAPTIVE)
    assert expected_sketch_steps(job, None) == 12  # unmeasured: the upper bound, 60% of 20
    assert expected_sketch_steps(job, 0.25) == 5  # the observed adaptive switch fraction
    assert expected_sketch_steps(job, 0.01) == 2  # never below the lower bound, 10% of 20


def test_terminal_jobs_are_not_work_and_unknown_pools_are_refused() -> None:
    board = asyncio.run(_board())
    assert estimate_pool_work([board.jobs["done"]], "render", now=T0 + 10).jobs == 0
    with pytest.raises(ValueError, match="unknown pool"):
        estimate_pool_work(board.jobs.values(), "decode", now=T0)


def test_the_board_answers_pool_work_for_its_replicas() -> None:
    board = asyncio.run(_board())
    out = asyncio.run(board.pool_work("render"))
    assert out["srserve_pool_jobs"] == 2.0 and out["srserve_pool_remaining_steps"] == 23.0
    assert all(isinstance(v, float) for v in out.values())
