"""Video editing served end to end: the tiny Wan2.1 VACE pair (a VACE-14B-shaped sketch, a VACE-1.3B-shaped render)
on one app of the session's cluster, fed multipart file parts over HTTP and bytes fields over gRPC. An
inpainting job (video and mask) and a reference-to-video job (reference images only) give the in-process
engine's bytes over both APIs; every bad input is refused naming its field before anything is queued; the
stored inputs go with their job; a render replica killed mid-job costs nothing (the stored inputs and the
handoff are reused). The admission checks themselves, without Ray: tests/test_vace_admission.py."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import ray
import requests
import torch
from PIL import Image

from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.inputs.image import describe_image, load_image
from srserve.engine.inputs.video_input import describe_video, load_video
from srserve.engine.video import encode_mp4
from tests.serving_helpers import TERMINAL, get, post, wait_done, wait_state

pytestmark = pytest.mark.slow

APP = "vace"
FRAMES, WIDTH, HEIGHT = 5, 48, 32
MAX_REFERENCES = 2
MAX_VIDEO_FRAMES = 9
MAX_VIDEO_PIXELS = 64 * 64
BODY = {"prompt": "a fox in the snow", "num_inference_steps": 4, "switch": "fixed:2", "seed": 3}
LIMITS = {"max_bytes": 1 << 24, "max_frames": 1 << 10, "max_pixels": 1 << 24}


def _clip(frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> bytes:
    """An mp4 of smooth moving colour (the project's own writer, as the engine exports its videos)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    a, b = rng.integers(1, 9, 2)
    video = np.stack([np.stack([x * a + 9 * f, y * b, x + y + f], axis=-1) % 256 for f in range(frames)])
    return encode_mp4(video.astype(np.uint8), fps=16)


def _mask(frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """White (regenerate) in a box in the middle, black (keep) around it."""
    mask = np.zeros((frames, height, width, 3), np.uint8)
    mask[:, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return encode_mp4(mask, fps=16)


def _png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


VIDEO, MASK = _clip(), _mask()
REFERENCES = (_png(24, 40, seed=1), _png(32, 32, seed=2))
FIRST_FRAME = _png(40, 24, seed=5)  # stretched to the video's size, as the pipeline's recipe does


@pytest.fixture(scope="module")
def vace_pair(tmp_path_factory: pytest.TempPathFactory) -> ModelPairConfig:
    return ModelPairConfig.tiny_pair("tiny-wan2.1-vace", tmp_path_factory.mktemp("tiny-vace-serving"), num_threads=1)


@pytest.fixture(scope="module")
def vace(serving, vace_pair: ModelPairConfig):
    """The VACE app (short leases, so a killed replica's job is taken over quickly; small editing limits), and
    its artifact folder."""
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import IngressConfig, PoolConfig, ServingConfig

    pool = PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    config = ServingConfig(
        app_name=APP,
        model=vace_pair,
        sketch_pool=pool,
        render_pool=pool,
        ingress=IngressConfig(
            max_video_frames=MAX_VIDEO_FRAMES,
            max_video_pixels=MAX_VIDEO_PIXELS,
            max_reference_images=MAX_REFERENCES,
            lease_ttl_s=3.0,
            claim_interval_s=0.5,
            default_deadline_s=900,
        ),
    ).resolved()
    serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")
    yield serving.http + f"/{APP}", Path(config.artifacts.path)
    serve.delete(APP)


@pytest.fixture(scope="module")
def engine_video(vace_pair: ModelPairConfig):
    """The in-process engine's mp4 for a request's fields and its editing files (one engine for the module)."""
    torch.set_num_threads(1)
    engine = SRDiffusionEngine(vace_pair)

    def run(
        video: bytes | None = None,
        mask: bytes | None = None,
        refs: tuple[bytes, ...] = (),
        image: bytes | None = None,
        **fields,
    ) -> bytes:
        described: dict[str, Any] = {}
        if image is not None:  # a first-frame condition (input_reference)
            described["input_reference"] = describe_image(image)
        frames: dict[str, Any] = {}
        for name, data in (("video", video), ("mask", mask)):
            if data is not None:
                frames[name] = load_video(data, name, **LIMITS)
                described[name] = describe_video(data, frames[name])
        if refs:
            described["reference_images"] = [describe_image(r) for r in refs]
        images = [load_image(r, len(r), 1 << 24) for r in refs] or None
        request = GenerationRequest(**{**BODY, **fields}, **described)
        edit = EditInputs(video=frames.get("video"), mask=frames.get("mask"), reference_images=images)
        first = None if image is None else load_image(image, len(image), 1 << 24)
        return engine.generate(request, image=first, edit=edit).video

    return run


def _form(**fields) -> dict[str, str]:
    return {k: str(v) for k, v in {**BODY, **fields}.items()}


def _files(video: bytes | None = None, mask: bytes | None = None, refs: tuple[bytes, ...] = ()) -> list:
    files = []
    if video is not None:
        files.append(("video", ("clip.mp4", video, "video/mp4")))
    if mask is not None:
        files.append(("mask", ("mask.mp4", mask, "video/mp4")))
    files += [("reference_images", (f"ref{i}.png", r, "image/png")) for i, r in enumerate(refs)]
    return files


def _count(base: str) -> int:
    return len(get(base, "/v1/videos?limit=1000").json()["data"])


def test_inpainting_and_reference_jobs_over_http_and_grpc_equal_the_engine(serving, vace, engine_video) -> None:
    """Inpainting and reference-to-video over both APIs, and OpenAI's `input_reference` as a first-frame
    condition over HTTP: each job's mp4 is the in-process engine's."""
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import make_request

    base, artifacts = vace
    inpaint = post(base, "/v1/videos", data=_form(conditioning_scale=0.5), files=_files(VIDEO, MASK))
    assert inpaint.status_code == 200, inpaint.text
    reference = post(
        base, "/v1/videos", data=_form(size=f"{WIDTH}x{HEIGHT}", num_frames=FRAMES), files=_files(refs=REFERENCES)
    )
    assert reference.status_code == 200, reference.text
    first = post(
        base,
        "/v1/videos",
        data=_form(size=f"{WIDTH}x{HEIGHT}", num_frames=FRAMES),
        files=[("input_reference", ("first.png", FIRST_FRAME, "image/png"))],
    )
    assert first.status_code == 200, first.text
    with SrserveClient(serving.grpc, application=APP) as client:
        fields = {k: v for k, v in BODY.items() if k != "prompt"}
        by_grpc = client.generate(
            make_request(BODY["prompt"], video=VIDEO, mask=MASK, conditioning_scale=0.5, **fields)
        )
        refs_grpc = client.generate(
            make_request(
                BODY["prompt"],
                reference_images=list(REFERENCES),
                width=WIDTH,
                height=HEIGHT,
                num_frames=FRAMES,
                **fields,
            )
        )
    inpainted = engine_video(VIDEO, MASK, conditioning_scale=0.5)
    referenced = engine_video(refs=REFERENCES, width=WIDTH, height=HEIGHT, num_frames=FRAMES)
    first_frame = engine_video(image=FIRST_FRAME, width=WIDTH, height=HEIGHT, num_frames=FRAMES)
    assert by_grpc.job.state == "completed" and by_grpc.mp4 == inpainted
    assert refs_grpc.job.state == "completed" and refs_grpc.mp4 == referenced
    for job, expected in ((inpaint.json(), inpainted), (reference.json(), referenced), (first.json(), first_frame)):
        done = wait_done(base, job["id"])
        assert done["status"] == "completed", done
        assert get(base, f"/v1/videos/{job['id']}/content").content == expected

    # The job shows its inputs as received (the video's shape, the images' sizes), never where they are stored.
    shown = get(base, f"/v1/videos/{inpaint.json()['id']}").json()["srserve"]
    assert shown["video"] == {
        "sha256": describe_video(VIDEO, load_video(VIDEO, "video", **LIMITS)).sha256,
        "media_type": "video/mp4",
        "width": WIDTH,
        "height": HEIGHT,
        "num_frames": FRAMES,
    }
    assert shown["mask"]["num_frames"] == FRAMES and shown["reference_images"] is None
    assert shown["conditioning_scale"] == 0.5
    refs_shown = get(base, f"/v1/videos/{reference.json()['id']}").json()["srserve"]["reference_images"]
    assert [(r["width"], r["height"]) for r in refs_shown] == [(24, 40), (32, 32)]
    assert "inputs/" not in by_grpc.job.request_json and "inputs/" not in str(shown)

    # Stored under the job's id before it was accepted; retention's path (and DELETE's) removes them with it.
    folder = artifacts / "inputs" / reference.json()["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["reference_0", "reference_1"]
    assert sorted(p.name for p in (artifacts / "inputs" / inpaint.json()["id"]).iterdir()) == ["mask", "video"]
    assert requests.delete(base + f"/v1/videos/{reference.json()['id']}", timeout=30).status_code == 200
    assert not folder.exists()


def test_bad_inputs_are_refused_naming_the_field_and_nothing_is_queued(serving, vace) -> None:
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import GenerationFailed, make_request

    base, _ = vace
    cases = [  # (form fields, files, the field named, a phrase of the message)
        ({}, _files(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64), "video", "the mp4"),
        ({}, _files(REFERENCES[0]), "video", "not an mp4 video"),
        ({}, _files(VIDEO, b"not a video at all"), "mask", "not an mp4 video"),
        ({"num_frames": 9}, _files(VIDEO), "video", "the request generates num_frames 9"),
        ({"size": "64x64"}, _files(VIDEO), "video", "the request generates width 64"),
        ({}, _files(VIDEO, _mask(frames=9)), "mask", f"the video has {FRAMES} frames of {WIDTH}x{HEIGHT}"),
        ({}, _files(VIDEO, _mask(width=32)), "mask", "the video has"),
        ({}, _files(_clip(frames=13)), "video", f"more than {MAX_VIDEO_FRAMES} frames"),
        ({}, _files(_clip(width=96, height=64)), "video", f"over the limit of {MAX_VIDEO_PIXELS}"),
        ({}, _files(refs=REFERENCES * 2), "reference_images", f"4 given, at most {MAX_REFERENCES}"),
        ({}, _files(refs=(b"GIF89a nope",)), "reference_images", "reference_images[0]:"),
        ({"video": "https://example.com/clip.mp4"}, [], "video", "multipart/form-data file part"),
        ({}, [("prompt", ("p.txt", b"a fox", "text/plain"))], "prompt", "expected a text field, got a file"),
        (
            {},
            [("video", ("a.mp4", VIDEO, "video/mp4")), ("video", ("b.mp4", VIDEO, "video/mp4"))],
            "video",
            "more than once",
        ),
    ]
    before = _count(base)
    for fields, files, param, needle in cases:
        data = _form(**fields)
        if param == "prompt":
            data.pop("prompt")
        r = post(base, "/v1/videos", data=data, files=files or None)
        assert r.status_code == 400, (param, needle, r.text)
        error = r.json()["error"]
        assert error["param"] == param and needle in error["message"], (needle, error)
    as_json = post(base, "/v1/videos", json={**BODY, "mask": "mask.mp4"})
    assert as_json.status_code == 400 and as_json.json()["error"]["param"] == "mask"
    with SrserveClient(serving.grpc, application=APP) as client:
        grpc_cases = [
            ({"video": b"\x00\x00\x00\x18ftyp nope"}, "video"),
            ({"video": VIDEO, "mask": _mask(frames=9)}, "mask"),
            ({"video": VIDEO, "num_frames": 9}, "video"),
            ({"reference_images": list(REFERENCES) * 2}, "reference_images"),
            ({"mask": MASK}, "mask"),
        ]
        for fields, param in grpc_cases:
            with pytest.raises(GenerationFailed) as err:
                client.submit(make_request(BODY["prompt"], **fields))
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.details.startswith(f"{param}:")
    assert _count(base) == before

    # A text-to-video deployment refuses every editing input over both APIs, naming the field, unread.
    t2v = post(serving.http, "/v1/videos", data=_form(), files=_files(refs=REFERENCES[:1]))
    assert t2v.status_code == 400 and t2v.json()["error"]["param"] == "reference_images"
    assert "does not edit video" in t2v.json()["error"]["message"]
    scale = post(serving.http, "/v1/videos", json={**BODY, "conditioning_scale": 0.5})
    assert scale.status_code == 400 and scale.json()["error"]["param"] == "conditioning_scale"
    with SrserveClient(serving.grpc, application=serving.app_name) as client, pytest.raises(GenerationFailed) as err:
        client.submit(make_request("t2v", video=VIDEO))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.details.startswith("video:")


def test_vace_openapi_publishes_the_editing_form(vace) -> None:
    base, _ = vace
    doc = get(base, "/openapi.json").json()
    body = doc["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert list(body) == ["multipart/form-data"]
    form = doc["components"]["schemas"]["VideoCreateForm"]
    assert {"video", "mask", "reference_images", "input_reference", "conditioning_scale"} <= set(form["properties"])
    assert form["required"] == ["prompt"]


def _render_replica() -> ray.actor.ActorHandle:
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"{APP}#RenderWorker#" in a["name"]]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])


def test_render_replica_killed_mid_vace_job_completes_with_identical_bytes(vace, engine_video) -> None:
    """Killed once the job renders (its state, not a delay, says when): the render runs again on a new replica from
    the stored handoff; the sketch, which read the stored inputs, is not repeated."""
    base, _ = vace
    fields = {"num_inference_steps": 40, "switch": "fixed:1", "seed": 8}
    job = post(base, "/v1/videos", data=_form(**fields), files=_files(VIDEO, MASK, REFERENCES[:1])).json()
    wait_state(base, job["id"], timeout_s=600, until=lambda j: j["srserve"]["state"] in ("rendering", *TERMINAL))
    ray.kill(_render_replica(), no_restart=True)
    done = wait_done(base, job["id"])
    assert done["status"] == "completed", done
    assert done["srserve"]["attempts"]["render"] >= 2, done["srserve"]  # the render ran again, elsewhere
    served = get(base, f"/v1/videos/{job['id']}/content").content
    assert served == engine_video(VIDEO, MASK, REFERENCES[:1], **fields)
