"""The OpenAI-compatible HTTP API against a real srserve on a local Ray cluster."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import openai
import pytest
import requests
import torch

from srserve.engine import GenerationRequest, SRDiffusionEngine
from srserve.engine.video import read_mp4
from tests.serving_helpers import get, post, wait_state

pytestmark = pytest.mark.slow


def assert_refused(r: requests.Response) -> None:
    """A refusal under load: the backlog's 429, with Retry-After and a message that says why."""
    assert r.status_code == 429 and r.headers["retry-after"].isdigit(), (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "resource_exhausted" and "pool is full" in error["message"], error


def submit(base: str, body: dict[str, Any], path: str = "/v1/videos", timeout_s: float = 300, **kw) -> dict:
    """POST a job; a refusal under load is checked (assert_refused), then retried after Retry-After."""
    end = time.monotonic() + timeout_s
    while True:
        r = post(base, path, json=body, **kw) if body is not None else post(base, path, **kw)
        if r.status_code != 429 or time.monotonic() > end:
            assert r.status_code == 200, r.text
            return r.json()
        assert_refused(r)
        time.sleep(int(r.headers["retry-after"]))


@pytest.fixture(scope="module")
def client(serving) -> openai.OpenAI:
    # The SDK retries a 429 after its Retry-After, as a client should; other errors surface at once.
    return openai.OpenAI(base_url=serving.http + "/v1", api_key="unused", max_retries=10)


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
    job = submit(serving.http, body)
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
    render_replicas: dict[str, tuple] = {}
    for _ in range(300):  # routing is random: ask until both replicas answered
        s = render.stats.remote().result()
        render_replicas[s["replica"]] = tuple(s["gpu_ids"])
        if len(render_replicas) == 2:
            break
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
        ({"prompt": "x", "switch": "fixed:201"}, "switch"),  # past the engine's 200 steps
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
    job = submit(serving.http, slow)
    wait_state(
        serving.http, job["id"], until=lambda j: j["srserve"]["state"] == "sketching" and j["srserve"]["step"] >= 2
    )
    follower = submit(serving.http, {"prompt": "next", "num_inference_steps": 4})
    cancelled = post(serving.http, f"/v1/videos/{job['id']}/cancel").json()
    assert cancelled["srserve"]["state"] == "cancelled"
    done = wait_state(serving.http, follower["id"])
    assert done["status"] == "completed"
    final = get(serving.http, f"/v1/videos/{job['id']}").json()
    # The sketch stopped at a step boundary (not after all 60), on the one sketch replica the follower then used.
    assert final["srserve"]["state"] == "cancelled" and final["srserve"]["step"] < 60
    assert final["error"]["code"] == "cancelled"
    assert done["srserve"]["replicas"]["sketch"] == final["srserve"]["replicas"]["sketch"]
    assert done["srserve"]["timeline"]["sketch_start"] >= final["srserve"]["timeline"]["sketch_start"]
    r = get(serving.http, f"/v1/videos/{job['id']}/content")
    assert r.status_code == 409


def test_cancel_mid_render(serving) -> None:
    body = {"prompt": "slow render", "num_inference_steps": 80, "switch": "fixed:1"}
    job = submit(serving.http, body)
    wait_state(
        serving.http, job["id"], until=lambda j: j["srserve"]["state"] == "rendering" and j["srserve"]["step"] >= 3
    )
    post(serving.http, f"/v1/videos/{job['id']}/cancel")
    final = wait_state(serving.http, job["id"])
    assert final["srserve"]["state"] == "cancelled" and final["srserve"]["step"] < 80
    follower = submit(serving.http, {"prompt": "after", "num_inference_steps": 4})
    assert wait_state(serving.http, follower["id"])["status"] == "completed"


def test_deadline_fails_the_job(serving) -> None:
    # 200 steps cannot finish within 50 ms on any machine; the job fails wherever the deadline finds it.
    body = {"prompt": "too slow", "num_inference_steps": 200, "switch": "fixed:100", "deadline_s": 0.05}
    job = submit(serving.http, body)
    final = wait_state(serving.http, job["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "deadline_exceeded"


def test_backpressure_refuses_beyond_the_backlog_and_loses_nothing(serving) -> None:
    body = {"prompt": "burst", "num_inference_steps": 12, "switch": "fixed:10"}
    responses = [post(serving.http, "/v1/videos", json=body) for _ in range(12)]
    accepted = [r.json()["id"] for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert refused, "the sketch backlog (4) must refuse part of a burst of 12"
    for r in refused:
        assert_refused(r)
    assert accepted, "an idle-or-not backlog takes the first of a burst"
    for job_id in accepted:
        assert wait_state(serving.http, job_id, timeout_s=300)["status"] == "completed"


def test_health_and_pipelining_overlap(serving) -> None:
    health = get(serving.http, "/health").json()
    assert health["status"] == "ok"
    body = {"prompt": "overlap", "num_inference_steps": 10, "switch": "fixed:4"}
    ids = [submit(serving.http, body)["id"] for _ in range(3)]
    jobs = [wait_state(serving.http, i) for i in ids]
    t = [j["srserve"]["timeline"] for j in jobs]
    # While request i renders, request i+1 is already sketching.
    assert t[1]["sketch_start"] < t[0]["render_end"]
    assert np.all([j["status"] == "completed" for j in jobs])


def test_switch_past_the_step_count_runs_the_large_model_only(serving) -> None:
    job = submit(serving.http, {"prompt": "all large", "num_inference_steps": 3, "switch": "fixed:9"})
    done = wait_state(serving.http, job["id"])
    assert done["status"] == "completed" and done["srserve"]["switch_step"] == 3


def test_methods_media_types_and_the_schema(serving) -> None:
    r = requests.patch(serving.http + "/v1/videos", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = requests.put(serving.http + "/v1/videos/video_" + "0" * 32, timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    r = post(serving.http, "/v1/videos", data="prompt=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = post(serving.http, "/v1/videos", data={"prompt": "x", "seed": "1.5"})  # urlencoded: typed by the schema
    assert r.status_code == 400 and "seed" in r.json()["error"]["message"]
    r = post(serving.http, "/v1/videos", json={"prompt": "x", "height": None})
    assert r.status_code == 400 and "height" in r.json()["error"]["message"]
    assert get(serving.http, "/v1/nothing-here").json()["error"]["code"] == "not_found"
    doc = get(serving.http, "/openapi.json").json()
    create = doc["paths"]["/v1/videos"]["post"]
    assert set(create["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    }
    assert {"200", "400", "413", "429", "503"} <= set(create["responses"])
    params = doc["components"]["schemas"]["VideoCreateParams"]
    assert params["properties"]["model"]["enum"] == ["tiny-wan2.1"] and params["required"] == ["prompt"]
    assert params["additionalProperties"] is False


def test_range_headers_malformed_unsatisfiable_and_empty(serving) -> None:
    """The published Range pattern decides: outside it a 400 naming `range`; well-formed but past the video a 416;
    an empty value names no range (the whole video)."""
    job = submit(serving.http, {"prompt": "ranges", "num_inference_steps": 2, "switch": "fixed:1"})
    assert wait_state(serving.http, job["id"])["status"] == "completed"
    url = f"/v1/videos/{job['id']}/content"
    whole = get(serving.http, url).content
    size = len(whole)
    for header in ("{}", "bytes=0-1,4-5", "items=0-5", "bytes=-0", "bytes=x-"):
        r = get(serving.http, url, headers={"Range": header})
        assert r.status_code == 400 and r.json()["error"]["param"] == "range", (header, r.status_code, r.text)
    for header in (f"bytes={size}-", "bytes=5-2"):
        r = get(serving.http, url, headers={"Range": header})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}", (header, r.text)
    part = get(serving.http, url, headers={"Range": "bytes = 2 - 5"})
    assert part.status_code == 206 and part.content == whole[2:6]
    empty = get(serving.http, url, headers={"Range": ""})
    assert empty.status_code == 200 and empty.content == whole
    missing = get(serving.http, "/v1/videos/video_" + "0" * 32 + "/content", headers={"Range": "{}"})
    assert missing.status_code == 400  # the request's shape is checked before the store is asked
