"""The OpenAI-compatible HTTP API against a real srserve on a local Ray cluster."""

from __future__ import annotations

import hashlib

import numpy as np
import openai
import pytest
import torch

from srserve.engine import GenerationRequest, SRDiffusionEngine
from srserve.engine.video import read_mp4
from tests.serving_helpers import get, post, wait_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(serving) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving.http + "/v1", api_key="unused", max_retries=0)


def test_openai_sdk_round_trip(client: openai.OpenAI, tmp_path) -> None:
    video = client.videos.create(
        prompt="a lighthouse at dusk",
        size="64x48",
        seconds="1",
        extra_body={"num_inference_steps": 6, "switch": "fixed:2", "seed": 5},
    )
    assert video.object == "video" and video.status in ("queued", "in_progress")
    assert video.size == "64x48" and video.model == "tiny-wan2.1"
    done = client.videos.poll(video.id, poll_interval_ms=100)
    assert done.status == "completed" and done.progress == 100
    assert client.videos.retrieve(video.id).status == "completed"

    polled = client.videos.create_and_poll(
        prompt="a second video", extra_body={"num_inference_steps": 4}, poll_interval_ms=100
    )
    assert polled.status == "completed"

    content = client.videos.download_content(video.id)
    path = tmp_path / "v.mp4"
    content.write_to_file(path)
    frames = read_mp4(path)
    assert frames.shape == (17, 48, 64, 3)  # 1 s at 16 fps -> 17 frames (4k+1)

    ids = [v.id for v in client.videos.list(limit=1, order="desc")]  # auto-paginates
    assert video.id in ids and polled.id in ids
    deleted = client.videos.delete(polled.id)
    assert deleted.deleted and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(polled.id)

    models = get(client.base_url.__str__().rstrip("/").removesuffix("/v1"), "/v1/models").json()
    assert models["data"][0]["id"] == "tiny-wan2.1"


def test_pools_equal_the_in_process_engine_bit_for_bit(serving, tiny_config) -> None:
    body = {
        "prompt": "a koi pond",
        "negative_prompt": "blur",
        "num_inference_steps": 8,
        "switch": "fixed:3",
        "seed": 11,
    }
    job = post(serving.http, "/v1/videos", json=body).json()
    done = wait_state(serving.http, job["id"])
    assert done["status"] == "completed", done
    served_mp4 = get(serving.http, f"/v1/videos/{job['id']}/content").content

    torch.set_num_threads(1)
    engine = SRDiffusionEngine(tiny_config)
    local = engine.generate(GenerationRequest(**body))
    local_digest = hashlib.sha256(local.latents.float().contiguous().numpy().tobytes()).hexdigest()
    assert done["srserve"]["latents_sha256"] == local_digest
    assert done["srserve"]["switch_step"] == 3 and done["srserve"]["handoff_bytes"] > 0
    assert served_mp4 == local.video


def test_pools_sit_on_different_gpus_and_scale_independently(serving) -> None:
    from ray import serve

    sketch = serve.get_deployment_handle("SketchWorker", app_name=serving.app_name)
    render = serve.get_deployment_handle("RenderWorker", app_name=serving.app_name)
    sketch_stats = {tuple(s["gpu_ids"]) for s in [sketch.stats.remote().result() for _ in range(6)]}
    render_replicas = {}
    for _ in range(30):
        s = render.stats.remote().result()
        render_replicas[s["replica"]] = tuple(s["gpu_ids"])
    status = serve.status().applications[serving.app_name].deployments
    assert status["SketchWorker"].replica_states.get("RUNNING") == 1
    assert status["RenderWorker"].replica_states.get("RUNNING") == 2
    assert len(render_replicas) == 2
    (sketch_gpus,) = sketch_stats
    render_gpus = set(render_replicas.values())
    assert len(sketch_gpus) == 1 and len(render_gpus) == 1
    assert sketch_gpus != next(iter(render_gpus))  # sketch and render on different (fake) GPUs


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "height": 50}, "height"),
        ({"prompt": "x", "num_frames": 10}, "num_frames"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "switch": "fixed:99"}, "switch"),
        ({"prompt": "x", "switch": "nonsense"}, "switch"),
        ({"prompt": "x", "seed": -3}, "seed"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "seconds": "forever"}, "seconds"),
        ({"prompt": "x", "model": "sora-2"}, "model"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "x", "guidance_scale": "loud"}, "guidance_scale"),
        ({"prompt": "x", "deadline_s": -1}, "deadline_s"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(serving, body: dict, field: str) -> None:
    r = post(serving.http, "/v1/videos", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]


def test_bad_input_as_multipart_and_garbage(serving) -> None:
    r = post(serving.http, "/v1/videos", files={"prompt": (None, "x"), "num_frames": (None, "six")})
    assert r.status_code == 400 and "num_frames" in r.json()["error"]["message"]
    r = post(serving.http, "/v1/videos", data=b"\x00\xffnot json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = post(serving.http, "/v1/videos", json=["a", "list"])
    assert r.status_code == 400
    r = post(serving.http, "/v1/videos", json={"prompt": "x" * (2 << 20)})
    assert r.status_code == 413
    assert get(serving.http, "/v1/videos?limit=0").status_code == 400
    assert get(serving.http, "/v1/videos?limit=abc").status_code == 400
    assert get(serving.http, "/v1/videos/video_nope").status_code == 404
    assert get(serving.http, "/v1/videos/video_nope/content").status_code == 404
    assert requests_delete(serving.http + "/v1/videos/video_nope").status_code == 404


def requests_delete(url: str):
    import requests

    return requests.delete(url, timeout=30)


def test_cancel_mid_sketch_frees_the_replica(serving) -> None:
    slow = {"prompt": "slow", "num_inference_steps": 60, "switch": "fixed:60"}
    job = post(serving.http, "/v1/videos", json=slow).json()
    wait_state(
        serving.http, job["id"], until=lambda j: j["srserve"]["state"] == "sketching" and j["srserve"]["step"] >= 2
    )
    follower = post(serving.http, "/v1/videos", json={"prompt": "next", "num_inference_steps": 4}).json()
    cancelled = post(serving.http, f"/v1/videos/{job['id']}/cancel").json()
    assert cancelled["srserve"]["state"] == "cancelled"
    done = wait_state(serving.http, follower["id"])
    assert done["status"] == "completed"
    final = get(serving.http, f"/v1/videos/{job['id']}").json()
    assert final["srserve"]["state"] == "cancelled" and final["srserve"]["step"] < 60
    assert final["error"]["code"] == "cancelled"
    # The follower's sketch began right after the cancel, not after the 58 remaining steps.
    assert done["srserve"]["timeline"]["sketch_start"] - final["completed_at"] < 2.0
    r = get(serving.http, f"/v1/videos/{job['id']}/content")
    assert r.status_code == 409


def test_cancel_mid_render(serving) -> None:
    body = {"prompt": "slow render", "num_inference_steps": 80, "switch": "fixed:1"}
    job = post(serving.http, "/v1/videos", json=body).json()
    wait_state(
        serving.http, job["id"], until=lambda j: j["srserve"]["state"] == "rendering" and j["srserve"]["step"] >= 3
    )
    post(serving.http, f"/v1/videos/{job['id']}/cancel")
    final = wait_state(serving.http, job["id"])
    assert final["srserve"]["state"] == "cancelled" and final["srserve"]["step"] < 80
    follower = post(serving.http, "/v1/videos", json={"prompt": "after", "num_inference_steps": 4}).json()
    assert wait_state(serving.http, follower["id"])["status"] == "completed"


def test_deadline_fails_the_job(serving) -> None:
    body = {"prompt": "too slow", "num_inference_steps": 60, "switch": "fixed:30", "deadline_s": 0.5}
    job = post(serving.http, "/v1/videos", json=body).json()
    final = wait_state(serving.http, job["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "deadline_exceeded"


def test_backpressure_refuses_beyond_the_backlog_and_loses_nothing(serving) -> None:
    body = {"prompt": "burst", "num_inference_steps": 12, "switch": "fixed:10"}
    responses = [post(serving.http, "/v1/videos", json=body) for _ in range(12)]
    accepted = [r.json()["id"] for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert refused, "the sketch backlog (4) must refuse part of a burst of 12"
    assert all(r.status_code == 429 and r.json()["error"]["code"] == "resource_exhausted" for r in refused)
    assert len(accepted) >= 4
    for job_id in accepted:
        assert wait_state(serving.http, job_id, timeout_s=300)["status"] == "completed"


def test_health_and_pipelining_overlap(serving) -> None:
    health = get(serving.http, "/health").json()
    assert health["status"] == "ok"
    body = {"prompt": "overlap", "num_inference_steps": 10, "switch": "fixed:4"}
    ids = [post(serving.http, "/v1/videos", json=body).json()["id"] for _ in range(3)]
    jobs = [wait_state(serving.http, i) for i in ids]
    t = [j["srserve"]["timeline"] for j in jobs]
    # While request i renders, request i+1 is already sketching.
    assert t[1]["sketch_start"] < t[0]["render_end"]
    assert np.all([j["status"] == "completed" for j in jobs])
