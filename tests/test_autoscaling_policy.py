"""The queue-of-work autoscaling policy: its config is Serve's, its decisions follow the GPU-seconds."""

from __future__ import annotations

import logging

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from srserve.serving.config import PoolConfig, QueueWorkAutoscaling
from srserve.serving.ops.autoscaling import (
    INCOMING_S,
    JOBS,
    STEP_S,
    UNPRICED_STEPS,
    WORK_S,
    PoolLoad,
    QueueWorkPolicy,
    decide,
    read_pool_load,
)

DEPLOYMENT = DeploymentID(name="RenderWorker", app_name="srserve")
SETTINGS = {
    "target_work_s": 10.0,
    "default_step_s": 0.5,
    "lookahead": 0.0,
    "upscale_cooldown_s": 0.0,
    "downscale_cooldown_s": 30.0,
}


def _replica(uid: str) -> ReplicaID:
    return ReplicaID(unique_id=uid, deployment_id=DEPLOYMENT)


def _load(work_s: float, unpriced: float = 0.0, incoming: float = 0.0) -> PoolLoad:
    return PoolLoad(work_s, unpriced, incoming, jobs=3, step_s=0.1, replicas_reporting=1)


def test_the_pool_config_becomes_a_serve_autoscaling_config_with_the_policy() -> None:
    pool = PoolConfig(queue_autoscaling={"min_replicas": 1, "max_replicas": 6, "target_work_s": 300})
    opts = pool.deployment_options()
    assert "num_replicas" not in opts and opts["graceful_shutdown_timeout_s"] == 900.0
    config = AutoscalingConfig(**opts["autoscaling_config"])  # Serve's own validation
    assert (config.min_replicas, config.max_replicas) == (1, 6)
    policy_class = config.policy.get_policy()  # resolved from the import path, as the controller does
    assert policy_class is QueueWorkPolicy
    policy = policy_class(**config.policy.policy_kwargs)
    assert policy.settings["target_work_s"] == 300.0
    with pytest.raises(ValueError, match="not both"):
        PoolConfig(queue_autoscaling={}, autoscaling_config={"max_replicas": 2})
    with pytest.raises(ValueError, match="min_replicas"):
        QueueWorkAutoscaling(min_replicas=3, max_replicas=2)


def test_the_policy_takes_every_setting_from_the_config() -> None:
    """One set of defaults, the config's: Serve hands the policy all of them, and it has none of its own."""
    kwargs = QueueWorkAutoscaling().policy_kwargs()
    policy = QueueWorkPolicy(**kwargs)
    assert policy.settings == {k: v for k, v in kwargs.items() if k != "log_every_s"}
    assert policy.log_every_s == kwargs["log_every_s"]
    with pytest.raises(TypeError):
        QueueWorkPolicy()


def test_replicas_follow_the_queued_gpu_seconds() -> None:
    up = decide(_load(35.0), 1, 1, 8, now=100.0, last_scale_up=None, last_scale_down=None, **SETTINGS)
    assert (up.replicas, up.action) == (4, "scale_up")  # ceil(35 / 10)
    capped = decide(_load(500.0), 2, 1, 5, now=100.0, last_scale_up=None, last_scale_down=None, **SETTINGS)
    assert (capped.replicas, capped.action) == (5, "scale_up")
    idle = decide(_load(0.0), 4, 1, 8, now=100.0, last_scale_up=10.0, last_scale_down=None, **SETTINGS)
    assert (idle.replicas, idle.action) == (1, "scale_down")
    steady = decide(_load(18.0), 2, 1, 8, now=100.0, last_scale_up=None, last_scale_down=None, **SETTINGS)
    assert (steady.replicas, steady.action) == (2, "hold")


def test_unmeasured_steps_and_lookahead_are_priced() -> None:
    # 40 unpriced steps at default_step_s 0.5 = 20 GPU-s; lookahead 0.5 of 20 incoming = 10.
    settings = {**SETTINGS, "lookahead": 0.5}
    d = decide(_load(0.0, 40, 20.0), 1, 1, 8, now=1.0, last_scale_up=None, last_scale_down=None, **settings)
    assert d.work_s == pytest.approx(30.0) and d.replicas == 3


def test_cool_downs_hold_scaling() -> None:
    down = decide(_load(0.0), 4, 1, 8, now=100.0, last_scale_up=90.0, last_scale_down=None, **SETTINGS)
    assert (down.replicas, down.action) == (4, "hold") and "cooling down" in down.reason
    settings = {**SETTINGS, "upscale_cooldown_s": 20.0}
    up = decide(_load(80.0), 2, 1, 8, now=100.0, last_scale_up=95.0, last_scale_down=None, **settings)
    assert (up.replicas, up.action) == (2, "hold")
    later = decide(_load(80.0), 2, 1, 8, now=120.0, last_scale_up=95.0, last_scale_down=None, **settings)
    assert later.replicas == 8


def test_without_reports_the_pool_holds_within_bounds() -> None:
    d = decide(None, 3, 1, 2, now=1.0, last_scale_up=None, last_scale_down=None, **SETTINGS)
    assert d.replicas == 2 and d.work_s is None


def test_the_pool_figure_is_the_highest_replica_report() -> None:
    r1, r2 = _replica("a"), _replica("b")
    load = read_pool_load(
        {WORK_S: {r1: 10.0, r2: 12.0}, UNPRICED_STEPS: {r1: 0.0, r2: 0.0}, JOBS: {r1: 3, r2: 4}, STEP_S: {r1: 0.1}}
    )
    assert load is not None and (load.work_s, load.jobs, load.replicas_reporting) == (12.0, 4, 2)
    assert load.incoming_s == 0.0  # not reported: zero
    assert read_pool_load({}) is None and read_pool_load(None) is None


def test_policy_called_as_serve_calls_it_logs_each_decision_once(caplog) -> None:
    policy = QueueWorkPolicy(**SETTINGS, log_every_s=30.0)
    serve_logger = logging.getLogger("ray.serve")
    serve_logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ray.serve")
    r1 = _replica("a")
    state: dict = {}
    try:
        for tick in range(3):
            ctx = AutoscalingContext(
                deployment_id=DEPLOYMENT,
                deployment_name="RenderWorker",
                app_name="srserve",
                current_num_replicas=1,
                target_num_replicas=1,
                running_replicas=[r1],
                total_num_requests=5.0,
                total_queued_requests=0.0,
                aggregated_metrics={WORK_S: {r1: 25.0}, UNPRICED_STEPS: {r1: 0.0}, INCOMING_S: {r1: 0.0}},
                raw_metrics={},
                capacity_adjusted_min_replicas=1,
                capacity_adjusted_max_replicas=4,
                policy_state=state,
                last_scale_up_time=None,
                last_scale_down_time=None,
                current_time=1000.0 + tick,
                config=None,
            )
            target, state = policy(ctx)
            assert target == 3
    finally:
        serve_logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if "srserve autoscale" in r.getMessage()]
    assert len(lines) == 1, lines  # logged when decided, not every tick
    assert "deployment=RenderWorker decision=scale_up from=1 to=3 work_s=25.00" in lines[0]
    assert state["srserve_work_s"] == 25.0
