"""The load-aware switch's choice for given queue states (pure: no store, no Ray)."""

from __future__ import annotations

import pytest

from srserve.engine.request import SwitchPolicy
from srserve.serving.control.jobs import Job, JobState
from srserve.serving.control.pricing.load_switch import LoadSnapshot, LoadSwitchConfig, choose_switch, load_snapshot

N = 50
LOAD = SwitchPolicy(kind="load")  # adaptive bounds 5..30 of 50
CONFIG = LoadSwitchConfig(floor_fraction=0.2)  # never fewer than 10 sketch steps


def snap(sketch_work: float, render_work: float, t_l: float | None = 1.0, t_s: float | None = 0.25) -> LoadSnapshot:
    return LoadSnapshot(sketch_work, render_work, 1, 1, t_l, t_s, encode_s=0.5, decode_s=1.0)


def test_unmeasured_keeps_the_adaptive_bounds() -> None:
    choice = choose_switch(LOAD, N, snap(100, 0, t_l=None), CONFIG, slo_s=10)
    assert (choice.cap, choice.reason) == (30, "unmeasured")
    assert choice.policy == SwitchPolicy(kind="adaptive", min_step=5, max_step=30)


def test_room_uses_the_adaptive_step() -> None:
    choice = choose_switch(LOAD, N, snap(0, 0), CONFIG, slo_s=None)
    assert (choice.cap, choice.reason) == (30, "adaptive")
    choice = choose_switch(LOAD, N, snap(5, 40), CONFIG, slo_s=None)  # render is the busy pool
    assert (choice.cap, choice.reason) == (30, "adaptive")


def test_sketch_bottleneck_balances_the_pools() -> None:
    # k* = N t_s / (t_l + t_s) = 50 * 0.25 / 1.25 = 10 with one replica each
    choice = choose_switch(LOAD, N, snap(60, 10), CONFIG, slo_s=None)
    assert (choice.cap, choice.reason) == (10, "balance")
    assert choice.policy.max_step == 10 and choice.policy.min_step == 5
    two_sketch = LoadSnapshot(60, 10, 2, 1, 1.0, 0.25)  # twice the sketch capacity: k* = 100*0.25/1.5 = 17
    assert choose_switch(LOAD, N, two_sketch, CONFIG, None).cap == 17


def test_balance_never_goes_below_the_floor() -> None:
    config = LoadSwitchConfig(floor_fraction=0.3)
    choice = choose_switch(LOAD, N, snap(60, 10), config, slo_s=None)
    assert (choice.cap, choice.reason) == (15, "balance")


def test_slo_lowers_the_cap_to_what_meets_it() -> None:
    load = snap(5, 5)  # not sketch-bound; L(k) = 5 + 0.5 + k + (50 - k) * 0.25 + 1 = 19 + 0.75 k
    choice = choose_switch(LOAD, N, load, CONFIG, slo_s=34.0)
    assert (choice.cap, choice.reason) == (20, "slo")
    assert choice.predicted_s == pytest.approx(34.0)


def test_unreachable_slo_holds_at_the_floor() -> None:
    choice = choose_switch(LOAD, N, snap(500, 0), CONFIG, slo_s=30.0)
    assert (choice.cap, choice.reason) == (10, "floor")


def test_request_bounds_win_over_the_floor() -> None:
    low = SwitchPolicy(kind="load", min_step=2, max_step=6)
    choice = choose_switch(low, N, snap(500, 0), CONFIG, slo_s=30.0)
    assert choice.cap == 6 and choice.policy.max_step == 6  # its own max is below the operator's floor


def test_same_snapshot_same_choice() -> None:
    load = snap(37.5, 12.25)
    assert len({choose_switch(LOAD, N, load, CONFIG, 40.0) for _ in range(5)}) == 1


def test_snapshot_from_the_store_records() -> None:
    done = Job(id="a", request={"switch": {"kind": "fixed", "step": 4}}, created_at=0.0, num_steps=10)
    done.state, done.switch_step = JobState.COMPLETED, 4
    done.timeline = {"sketch_start": 0.0, "sketch_end": 4.0, "render_start": 4.5, "decode_start": 7.5}
    waiting = [
        Job(id=f"q{i}", request={"switch": {"kind": "fixed", "step": 4}}, created_at=1.0, num_steps=10)
        for i in range(3)
    ]
    load = load_snapshot([done, *waiting], 10.0, 1, 2)
    assert (load.sketch_step_s, load.render_step_s) == (1.0, 0.5)
    assert load.sketch_work_s == pytest.approx(3 * 4 * 1.0)
    assert load.render_work_s == pytest.approx(3 * 6 * 0.5)  # incoming from the sketch queue
    assert load.render_wait_s == pytest.approx(4.5)
