"""Image-to-video served end to end: the tiny Wan2.1 I2V pair (a 14B-I2V-shaped sketch, a Fun-1.3B-InP-
shaped render) on its own app of the session's cluster, fed by the `openai` SDK's `input_reference` file
and by gRPC's image bytes. Served videos equal the in-process engine's bytes; every bad image is refused
naming `input_reference` before anything is queued; the stored image goes with its job; a render replica
killed mid-job costs nothing (the stored image and handoff are reused)."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import openai
import pytest
import ray
import torch
from PIL import Image

from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.engine.inputs.image import describe_image, load_image
from tests.serving_helpers import TERMINAL, get, post, wait_done, wait_state

pytestmark = pytest.mark.slow

APP = "i2v"
MAX_IMAGE_BYTES = 64 << 10
MAX_IMAGE_PIXELS = 512 * 512
BODY = {"prompt": "a paper boat drifting", "num_inference_steps": 6, "switch": "fixed:2", "seed": 3}


def _image(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A random-noise image (noise resists compression, so byte sizes are predictable)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def i2v_pair(tmp_path_factory: pytest.TempPathFactory) -> ModelPairConfig:
    return ModelPairConfig.tiny_pair("tiny-wan2.1-i2v", tmp_path_factory.mktemp("tiny-i2v-serving"), num_threads=1)


@pytest.fixture(scope="module")
def i2v(serving, i2v_pair: ModelPairConfig):
    """The I2V app (short leases, so a killed replica's job is taken over quickly), and its artifact folder."""
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import IngressConfig, PoolConfig, ServingConfig

    pool = PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    config = ServingConfig(
        app_name=APP,
        model=i2v_pair,
        sketch_pool=pool,
        render_pool=pool,
        ingress=IngressConfig(
            max_image_bytes=MAX_IMAGE_BYTES,
            max_image_pixels=MAX_IMAGE_PIXELS,
            lease_ttl_s=3.0,
            claim_interval_s=0.5,
            default_deadline_s=900,
        ),
    ).resolved()
    serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")
    yield serving.http + f"/{APP}", Path(config.artifacts.path)
    serve.delete(APP)


def _engine_video(pair: ModelPairConfig, data: bytes, **fields) -> bytes:
    """The in-process engine's mp4 for the same request and image."""
    torch.set_num_threads(1)
    request = GenerationRequest(**{**BODY, **fields}, input_reference=describe_image(data))
    return SRDiffusionEngine(pair).generate(request, image=load_image(data, len(data), 1 << 24)).video


def _count(base: str) -> int:
    return len(get(base, "/v1/videos?limit=1000").json()["data"])


def test_openai_sdk_and_grpc_image_to_video_equal_the_engine(serving, i2v, i2v_pair: ModelPairConfig) -> None:
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import make_request

    base, artifacts = i2v
    png = _image(96, 80, "PNG", seed=1)  # not the video's size: stretched to 64x64 as diffusers does
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=10)
    video = client.videos.create(
        prompt=BODY["prompt"],
        size="64x64",
        seconds="1",
        input_reference=("boat.png", png, "image/png"),
        extra_body={k: v for k, v in BODY.items() if k != "prompt"},
    )
    done = client.videos.poll(video.id, poll_interval_ms=100)
    assert done.status == "completed", done
    served = client.videos.download_content(video.id).read()
    assert served == _engine_video(i2v_pair, png)
    assert list((artifacts / "inputs" / video.id).iterdir()) == [artifacts / "inputs" / video.id / "image"]

    webp = _image(64, 64, "WEBP", seed=2)
    with SrserveClient(serving.grpc, application=APP) as grpc_client:
        fields = {k: v for k, v in BODY.items() if k != "prompt"}
        result = grpc_client.generate(make_request(BODY["prompt"], input_reference=webp, **fields))
    assert result.job.state == "completed" and result.mp4 == _engine_video(i2v_pair, webp)

    # Retention's path (and DELETE's): the job's stored image goes with it.
    client.videos.delete(video.id)
    assert not (artifacts / "inputs" / video.id).exists()


def test_bad_images_are_refused_naming_the_field_and_nothing_is_queued(serving, i2v) -> None:
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import GenerationFailed, make_request

    base, _ = i2v
    form = {k: str(v) for k, v in BODY.items()}
    png = _image(64, 64)
    truncated = png[: len(png) // 2]
    bomb = io.BytesIO()
    Image.new("RGB", (1024, 1024)).save(bomb, format="PNG")  # a few KB, a million pixels
    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, format="GIF")
    cases = {
        b"not an image at all": "not a PNG, JPEG or WebP image",
        gif.getvalue(): "GIF images are not accepted",
        truncated: "truncated or corrupt",
        _image(160, 160): "over the limit of 65536",  # ~77 KB of noise
        bomb.getvalue(): f"over the limit of {MAX_IMAGE_PIXELS}",
    }
    before = _count(base)
    for data, needle in cases.items():
        r = post(base, "/v1/videos", data=form, files={"input_reference": ("x.png", data, "image/png")})
        assert r.status_code == 400, (needle, r.text)
        error = r.json()["error"]
        assert error["param"] == "input_reference" and needle in error["message"], (needle, error)
    no_image = post(base, "/v1/videos", json=BODY)
    assert no_image.status_code == 400 and no_image.json()["error"]["param"] == "input_reference"
    assert "generates from an image" in no_image.json()["error"]["message"]
    as_text = post(base, "/v1/videos", json={**BODY, "input_reference": "https://example.com/x.png"})
    assert as_text.status_code == 400 and "multipart/form-data file part" in as_text.json()["error"]["message"]
    with SrserveClient(serving.grpc, application=APP) as client:
        for data, needle in ((b"\x89PNG nope", "not a PNG"), (None, "generates from an image")):
            with pytest.raises(GenerationFailed) as err:
                client.submit(make_request(BODY["prompt"], input_reference=data))
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details
            assert "input_reference" in err.value.details
    assert _count(base) == before

    # A text-to-video deployment refuses an image over both APIs, naming the field.
    r = post(serving.http, "/v1/videos", data=form, files={"input_reference": ("x.png", png, "image/png")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_reference"
    assert "text-to-video and takes no input image" in r.json()["error"]["message"]
    with SrserveClient(serving.grpc, application=serving.app_name) as client, pytest.raises(GenerationFailed) as err:
        client.submit(make_request("t2v", input_reference=png))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "takes no input image" in err.value.details


def test_i2v_openapi_publishes_the_image_form(i2v) -> None:
    base, _ = i2v
    doc = get(base, "/openapi.json").json()
    body = doc["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert list(body) == ["multipart/form-data"]  # JSON cannot carry the file
    form = doc["components"]["schemas"]["VideoCreateForm"]
    assert form["properties"]["input_reference"]["format"] == "binary"
    assert {"prompt", "input_reference"} <= set(form["required"])


def _render_replica() -> ray.actor.ActorHandle:
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"{APP}#RenderWorker#" in a["name"]]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])


def test_render_replica_killed_mid_i2v_job_completes_with_identical_bytes(i2v, i2v_pair: ModelPairConfig) -> None:
    base, _ = i2v
    png = _image(64, 64, seed=4)
    body = {k: str(v) for k, v in {**BODY, "num_inference_steps": 40, "switch": "fixed:1", "seed": 8}.items()}
    job = post(base, "/v1/videos", data=body, files={"input_reference": ("f.png", png, "image/png")}).json()
    wait_state(base, job["id"], timeout_s=600, until=lambda j: j["srserve"]["state"] in ("rendering", *TERMINAL))
    ray.kill(_render_replica(), no_restart=True)
    done = wait_done(base, job["id"])
    assert done["status"] == "completed", done
    assert done["srserve"]["attempts"]["render"] >= 2, done["srserve"]  # the render ran again, elsewhere
    served = get(base, f"/v1/videos/{job['id']}/content").content
    assert served == _engine_video(i2v_pair, png, num_inference_steps=40, switch="fixed:1", seed=8)
