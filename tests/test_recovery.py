"""Recovery at the handoff boundary: kill replicas mid-request with ray.kill; nothing is lost."""

from __future__ import annotations

import pytest
import ray

from tests.serving_helpers import get, post, wait_state

pytestmark = pytest.mark.slow


def _kill_replica(app: str, deployment: str, replica_id: str) -> None:
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if name.startswith("SERVE_REPLICA::") and name.endswith(f"{app}#{deployment}#{replica_id}"):
            ray.kill(ray.get_actor(name, namespace=actor["namespace"]), no_restart=True)
            return
    raise AssertionError(f"no replica {replica_id} of {deployment}")


def _reference_digest(serving, body: dict) -> str:
    job = post(serving.http, "/v1/videos", json=body).json()
    done = wait_state(serving.http, job["id"], timeout_s=300)
    assert done["status"] == "completed", done
    return done["srserve"]["latents_sha256"]


def test_render_replica_dies_mid_render_and_the_job_resumes_from_the_handoff(serving) -> None:
    body = {"prompt": "recover the render", "num_inference_steps": 40, "switch": "fixed:2", "seed": 21}
    expected = _reference_digest(serving, body)
    job = post(serving.http, "/v1/videos", json=body).json()
    running = wait_state(
        serving.http, job["id"], until=lambda j: j["srserve"]["state"] == "rendering" and j["srserve"]["step"] >= 6
    )
    victim = running["srserve"]["replicas"]["render"]
    _kill_replica(serving.app_name, "RenderWorker", victim)
    done = wait_state(serving.http, job["id"], timeout_s=300)
    assert done["status"] == "completed", done
    assert done["srserve"]["latents_sha256"] == expected  # equal to an undisturbed run
    detail = get(serving.http, f"/v1/videos/{job['id']}").json()["srserve"]
    assert detail["replicas"]["render"] != victim
    assert detail["attempts"] == {"sketch": 1, "render": 2}  # the sketch was not redone


def test_sketch_replica_dies_mid_sketch_and_the_sketch_restarts(serving) -> None:
    body = {"prompt": "recover the sketch", "num_inference_steps": 30, "switch": "fixed:20", "seed": 22}
    expected = _reference_digest(serving, body)
    job = post(serving.http, "/v1/videos", json=body).json()
    running = wait_state(
        serving.http, job["id"], until=lambda j: j["srserve"]["state"] == "sketching" and j["srserve"]["step"] >= 3
    )
    _kill_replica(serving.app_name, "SketchWorker", running["srserve"]["replicas"]["sketch"])
    done = wait_state(serving.http, job["id"], timeout_s=300)
    assert done["status"] == "completed", done
    assert done["srserve"]["latents_sha256"] == expected
    assert get(serving.http, f"/v1/videos/{job['id']}").json()["srserve"]["attempts"]["sketch"] == 2
