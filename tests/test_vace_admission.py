"""Video-editing admission without Ray: the ingress's limits, its decoding and checks of a VACE request's video, mask
and reference images (the real IngressCore on the tiny Wan2.1 VACE pair, no store opened), the stored inputs read
back as the sketch replica reads them, their storage keys kept from clients, and the VACE deployment's published
create body. Served end to end: tests/test_serving_vace.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from srserve.engine.config import ModelPairConfig
from srserve.engine.request import MAX_REFERENCE_IMAGES, GenerationRequest
from srserve.engine.video import encode_mp4
from srserve.serving.api.http import openapi_document, served_document
from srserve.serving.config import IngressConfig, ServingConfig
from srserve.serving.control.edit_uploads import EditUploads, decode_stored, stored_parts
from srserve.serving.control.errors import InvalidRequest
from srserve.serving.control.jobs import Job, artifact_prefix, edit_input_key
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.control.tenants import DEFAULT
from srserve.serving.ingress import IngressCore

NEVER = JobStoreConfig(embedded_dsn="postgresql://127.0.0.1:1/never_opened")
FRAMES, WIDTH, HEIGHT = 5, 32, 32


def _video(frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_mp4(rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8), fps=16)


def _png(width: int = 24, height: int = 40, value: int = 200) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _core(pair: ModelPairConfig, **ingress) -> IngressCore:
    config = ServingConfig(model=pair, job_store=NEVER, ingress=IngressConfig(**ingress))
    return IngressCore(config, pair.defaults, pair.name, pair.family, {}, pair=pair)


@pytest.fixture(scope="module")
def vace(tmp_path_factory: pytest.TempPathFactory) -> IngressCore:
    pair = ModelPairConfig.tiny_pair("tiny-wan2.1-vace", tmp_path_factory.mktemp("tiny-vace-admission"))
    return _core(pair, max_video_pixels=64 * 64, max_video_frames=9, max_reference_images=2)


@pytest.fixture(scope="module")
def t2v(tiny_root: Path) -> IngressCore:
    return _core(ModelPairConfig.tiny(tiny_root, write=False))


def _check(core: IngressCore, uploads: EditUploads, **fields) -> GenerationRequest:
    return asyncio.run(core.check_edit(GenerationRequest(prompt="a fox", **fields), uploads))


def _refused(core: IngressCore, uploads: EditUploads, **fields) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        _check(core, uploads, **fields)
    return err.value


def test_default_limits_fit_an_81_frame_720p_video_and_references_are_bounded_by_the_engine() -> None:
    limits = IngressConfig()
    assert limits.max_video_frames >= 81 and limits.max_video_pixels >= 1280 * 720
    assert limits.max_reference_images == MAX_REFERENCE_IMAGES
    with pytest.raises(ValidationError, match="max_reference_images"):
        IngressConfig(max_reference_images=MAX_REFERENCE_IMAGES + 1)
    # What a multipart body or a GenerateRequest may carry on a VACE deployment, on top of max_request_bytes.
    assert limits.edit_upload_bytes() == 2 * limits.max_video_bytes + 5 * limits.max_image_bytes


def test_an_inpainting_request_is_described_and_its_stored_inputs_decode_as_admitted(vace: IngressCore) -> None:
    video, mask, ref = _video(), _video(seed=1), _png()
    request = _check(vace, EditUploads(video=video, mask=mask, reference_images=(ref,)), conditioning_scale=0.5)
    assert request.video is not None and request.mask is not None and request.reference_images is not None
    assert (request.video.num_frames, request.video.width, request.video.height) == (FRAMES, WIDTH, HEIGHT)
    assert request.video.sha256 == hashlib.sha256(video).hexdigest()
    assert request.mask.sha256 == hashlib.sha256(mask).hexdigest()
    assert (request.reference_images[0].width, request.reference_images[0].height) == (24, 40)
    assert request.conditioning_scale == 0.5
    # The order the ingress stores them in is the order the sketch replica reads them back.
    assert [name for _, name, _ in stored_parts(request)] == [
        name for name, _ in EditUploads(video, mask, (ref,)).parts()
    ]
    inputs = decode_stored(request, [video, mask, ref])
    inputs.check(request)
    assert len(inputs.video or []) == FRAMES and inputs.reference_images[0].size == (24, 40)
    with pytest.raises(ValueError, match=r"^mask: the stored input is not the one"):
        decode_stored(request, [video, video, ref])


def test_a_reference_to_video_request_takes_its_size_from_the_request(vace: IngressCore) -> None:
    request = _check(vace, EditUploads(reference_images=(_png(), _png(16, 16, 9))), width=48, height=32)
    assert request.video is None and len(request.reference_images or []) == 2
    resolved = vace.decide(request)
    assert (resolved.width, resolved.height) == (48, 32)


@pytest.mark.parametrize(
    ("uploads", "fields", "param", "needle"),
    [
        (EditUploads(video=b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64), {}, "video", "video: the mp4"),
        (EditUploads(video=_png()), {}, "video", "not an mp4 video"),
        (EditUploads(video=_video(), mask=b"junk"), {}, "mask", "mask: not an mp4"),
        (EditUploads(video=_video(), mask=_video(frames=9)), {}, "mask", "the video has 5 frames of 32x32"),
        (EditUploads(video=_video()), {"num_frames": 9}, "video", "the request generates num_frames 9"),
        (EditUploads(video=_video()), {"width": 64}, "video", "the request generates width 64"),
        (EditUploads(video=_video(frames=4)), {}, "video", "must be 4k+1"),
        (EditUploads(video=_video(frames=13)), {}, "video", "more than 9 frames"),
        (EditUploads(video=_video(width=96, height=64)), {}, "video", "over the limit of 4096"),
        (EditUploads(mask=_video()), {}, "mask", "the request has no video"),
        (EditUploads(reference_images=(_png(), _png(), _png())), {}, "reference_images", "3 given, at most 2"),
        (EditUploads(reference_images=(_png(), b"GIF89a")), {}, "reference_images", "reference_images[1]:"),
    ],
    ids=[
        "corrupt-mp4",
        "png-as-video",
        "junk-mask",
        "mask-shape",
        "frames-vs-request",
        "size-vs-request",
        "not-4k+1",
        "too-many-frames",
        "too-many-pixels",
        "mask-without-video",
        "too-many-references",
        "bad-reference",
    ],
)
def test_bad_editing_inputs_are_refused_naming_the_field(
    vace: IngressCore, uploads: EditUploads, fields: dict, param: str, needle: str
) -> None:
    error = _refused(vace, uploads, **fields)
    assert error.param == param and needle in error.message, (error.param, error.message)


def test_a_text_to_video_pair_refuses_every_editing_input(t2v: IngressCore) -> None:
    error = _refused(t2v, EditUploads(mask=_video(), reference_images=(_png(),)))
    assert error.param == "mask" and "does not edit video" in error.message
    with pytest.raises(InvalidRequest) as err:
        t2v.decide(GenerationRequest(prompt="a fox", conditioning_scale=0.5))
    assert err.value.param == "conditioning_scale"


def test_clients_never_see_the_inputs_storage_keys() -> None:
    key = edit_input_key("video_" + "0" * 32, "reference_1")
    assert key.startswith(artifact_prefix("inputs", "video_" + "0" * 32))  # retention and DELETE remove it
    described = {"sha256": "0" * 64, "media_type": "video/mp4", "width": 32, "height": 32, "num_frames": 5}
    image = {"sha256": "1" * 64, "media_type": "image/png", "width": 8, "height": 8}
    request = {
        "prompt": "a fox",
        "video": {**described, "key": "inputs/x/video"},
        "mask": {**described, "key": "inputs/x/mask"},
        "reference_images": [{**image, "key": "inputs/x/reference_0"}],
        "input_reference": {**image, "key": "inputs/x/image"},
    }
    summary = Job(id="video_" + "0" * 32, request=request, created_at=0.0).summary()
    assert "inputs/" not in str(summary)
    assert summary["request"]["video"] == described and summary["request"]["reference_images"] == [image]


def test_the_vace_document_publishes_a_multipart_form_with_the_editing_parts(
    vace: IngressCore, t2v: IngressCore
) -> None:
    doc = served_document(vace)
    body = doc["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert list(body) == ["multipart/form-data"]  # JSON cannot carry the files
    assert body["multipart/form-data"]["schema"] == {"$ref": "#/components/schemas/VideoCreateForm"}
    schemas = doc["components"]["schemas"]
    form, params = schemas["VideoCreateForm"], schemas["VideoCreateParams"]
    files = {"video", "mask", "reference_images", "input_reference"}
    assert set(form["properties"]) == set(params["properties"]) | files
    assert {k: v for k, v in form["properties"].items() if k not in files} == params["properties"]
    assert form["required"] == ["prompt"]  # every file is optional: reference-only, or text only
    props = form["properties"]
    for name in ("video", "mask"):
        assert props[name] == {**props[name], "type": "string", "format": "binary", "contentMediaType": "video/mp4"}
    assert props["reference_images"]["type"] == "array" and props["reference_images"]["minItems"] == 1
    assert props["reference_images"]["items"]["format"] == "binary"
    assert props["input_reference"]["format"] == "binary"
    assert params["properties"]["conditioning_scale"] == {**params["properties"]["conditioning_scale"], "minimum": 0.0}
    assert params["properties"]["conditioning_scale"]["maximum"] == 10.0
    # Details of a job (GET) describe its inputs, never where they are stored.
    details = schemas["SrserveDetails"]["properties"]
    assert {"video", "mask", "reference_images", "conditioning_scale"} <= set(details)
    assert "key" not in schemas["InputVideoSummary"]["properties"]
    # A text-to-video deployment publishes none of it: conditioning_scale is refused there.
    plain = served_document(t2v)
    assert "conditioning_scale" not in plain["components"]["schemas"]["VideoCreateParams"]["properties"]
    assert "VideoCreateForm" not in plain["components"]["schemas"]
    assert openapi_document("x", edits_video=True)["components"]["schemas"]["VideoCreateForm"]["title"] == (
        "VideoCreateForm"
    )


def test_inputs_written_for_a_job_the_store_refuses_are_deleted(tmp_path: Path, vace: IngressCore) -> None:
    """The job store cannot be reached (NEVER): the inputs stored under the would-be job's id are removed."""
    from srserve.serving.control.artifacts import ArtifactStoreConfig

    config = vace.config.model_copy(update={"artifacts": ArtifactStoreConfig(kind="local", path=str(tmp_path))})
    core = IngressCore(config, vace.defaults, vace.model_name, vace.family, {}, pair=vace.pair)
    uploads = EditUploads(video=_video(), mask=_video(seed=2), reference_images=(_png(),))
    with pytest.raises(Exception) as err:
        asyncio.run(core.submit(GenerationRequest(prompt="a fox", num_inference_steps=2), edit=uploads, tenant=DEFAULT))
    assert not isinstance(err.value, InvalidRequest), err.value  # refused by the store, not by admission
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
