"""Scale-down while jobs run: no job is lost, even when the removed replica is cut off early."""

from __future__ import annotations

import time

import pytest
import requests

from tests.serving_helpers import wait_state

pytestmark = pytest.mark.slow


def _config(tiny_config, render_replicas: int):
    from srserve.serving.config import PoolConfig, ServingConfig

    return ServingConfig(
        app_name="scaledown",
        model=tiny_config.model_copy(update={"num_threads": 1}),
        sketch_pool=PoolConfig(ray_actor_options={"num_cpus": 0.25}),
        # A 1 s grace period forces the removed replica to be stopped mid-job: the ingress must re-render.
        render_pool=PoolConfig(
            num_replicas=render_replicas, graceful_shutdown_timeout_s=1, ray_actor_options={"num_cpus": 0.25}
        ),
    )


def test_render_pool_scale_down_loses_no_job(serving, tiny_config) -> None:
    from ray import serve

    from srserve.serving.app import build_app

    serve.run(build_app(_config(tiny_config, 2)), name="scaledown", route_prefix="/scaledown")
    base = serving.http + "/scaledown"
    try:
        body = {"prompt": "scale down", "num_inference_steps": 80, "switch": "fixed:1"}
        ids = [requests.post(base + "/v1/videos", json={**body, "seed": i}, timeout=30).json()["id"] for i in range(5)]
        wait_state(base, ids[0], until=lambda j: j["srserve"]["state"] == "rendering")
        wait_state(base, ids[1], until=lambda j: j["srserve"]["state"] == "rendering")
        serve.run(build_app(_config(tiny_config, 1)), name="scaledown", route_prefix="/scaledown")
        finals = [wait_state(base, i, timeout_s=600) for i in ids]
        assert [f["status"] for f in finals] == ["completed"] * 5, [f.get("error") for f in finals]
        for _ in range(60):
            running = serve.status().applications["scaledown"].deployments["RenderWorker"].replica_states
            if running.get("RUNNING") == 1 and len(running) == 1:
                break
            time.sleep(0.5)
        assert running == {"RUNNING": 1}
    finally:
        serve.delete("scaledown")
