"""Scale-down while jobs run: no job is lost, even when the removed replica is cut off early.

The app is deployed from a config (as `serve deploy`, `serve run FILE` and KubeRay do), so changing
a pool's size is a lightweight update: the job board and the ingress keep running.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.serving_helpers import wait_state

pytestmark = pytest.mark.slow


def _deploy(tiny_config, render_replicas: int | None = None) -> None:
    """Deploy from a config; `render_replicas` goes in the `deployments` override section, the way an
    operator rescales a pool (changing the application's `args` would redeploy every replica)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from srserve.serving.config import APP_IMPORT_PATH, PoolConfig, ServingConfig

    config = ServingConfig(
        app_name="scaledown",
        model=tiny_config.model_copy(update={"num_threads": 1}),
        sketch_pool=PoolConfig(ray_actor_options={"num_cpus": 0.25}),
        # A 1 s grace period forces the removed replica to be stopped mid-job: the ingress must re-render.
        render_pool=PoolConfig(num_replicas=2, graceful_shutdown_timeout_s=1, ray_actor_options={"num_cpus": 0.25}),
    )
    app = {
        "name": "scaledown",
        "route_prefix": "/scaledown",
        "import_path": APP_IMPORT_PATH,
        "args": config.model_dump(mode="json", exclude={"app_name"}),
    }
    if render_replicas is not None:
        app["deployments"] = [{"name": "RenderWorker", "num_replicas": render_replicas}]
    # Not `_blocking=True`: that gives up after a fixed 60 s, which a loaded CI machine can exceed while
    # three replicas import torch and load their models. Wait for the app's own verdict instead.
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
    _wait_running(render_replicas or 2)


def _wait_running(render_replicas: int, deadline_s: float = 600) -> None:
    """Until the app is RUNNING with `render_replicas` render replicas; a failed deploy fails at once.

    The deadline only bounds a hang; nothing waits on it."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        app = serve.status().applications.get("scaledown")
        if app is not None:
            assert app.status != ApplicationStatus.DEPLOY_FAILED, app.message
            render = app.deployments.get("RenderWorker")
            states = render.replica_states if render else {}
            if app.status == ApplicationStatus.RUNNING and states == {"RUNNING": render_replicas}:
                return
        time.sleep(0.5)
    raise TimeoutError(f"scaledown did not reach RUNNING with {render_replicas} render replicas: {serve.status()}")


def _replica_names() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "::scaledown#" in a["name"])


def test_render_pool_scale_down_loses_no_job(serving, tiny_config) -> None:
    from ray import serve

    _deploy(tiny_config)
    base = serving.http + "/scaledown"
    try:
        body = {"prompt": "scale down", "num_inference_steps": 40, "switch": "fixed:1"}
        ids = [requests.post(base + "/v1/videos", json={**body, "seed": i}, timeout=30).json()["id"] for i in range(3)]
        wait_state(base, ids[0], timeout_s=600, until=lambda j: j["srserve"]["state"] == "rendering")
        wait_state(base, ids[1], timeout_s=600, until=lambda j: j["srserve"]["state"] == "rendering")
        before = _replica_names()
        _deploy(tiny_config, 1)
        finals = [wait_state(base, i, timeout_s=600) for i in ids]
        assert [f["status"] for f in finals] == ["completed"] * 3, [f.get("error") for f in finals]
        _wait_running(1)
        after = _replica_names()
        # Only a render replica went away: the job board, the ingress and the sketch pool kept running.
        assert [n for n in before if "RenderWorker" not in n] == [n for n in after if "RenderWorker" not in n]
    finally:
        serve.delete("scaledown")
