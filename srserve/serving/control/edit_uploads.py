"""A video-editing request's inputs as they travel through serving: the bytes of its video, mask and reference
images, decoded once at admission and again, from storage, by the sketch replica.

The ingress decodes the bytes a client sent within the configured limits (`decode_uploads`): that refuses
a corrupt file or one over a limit, naming the field, before anything is queued, and gives the request its
inputs' descriptions (sha256, size, frame count), which the job store, the checks and the handoff carry.
It then stores the bytes under the job's id (`stored_parts` names them). The sketch replica reads them
back and decodes them again (`decode_stored`) after checking they are the ones the job was accepted
with, so every attempt, on any replica, starts from the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.inputs.image import ImageInputError, describe_image, load_image
from srserve.engine.inputs.video_input import VideoInputError, describe_video, load_video
from srserve.engine.request import GenerationRequest, InputImage, InputVideo
from srserve.serving.control.errors import InvalidRequest

VIDEO_FIELDS = ("video", "mask")


@dataclass(frozen=True)
class EditLimits:
    """What admission decodes a video-editing request's inputs within (IngressConfig's limits)."""

    max_video_bytes: int
    max_video_frames: int
    max_video_pixels: int
    max_image_bytes: int
    max_image_pixels: int
    max_reference_images: int


@dataclass(frozen=True)
class EditUploads:
    """The bytes of a video-editing request's inputs as a client sent them (HTTP file parts, gRPC fields)."""

    video: bytes | None = None
    mask: bytes | None = None
    reference_images: tuple[bytes, ...] = ()

    def fields(self) -> list[str]:
        """The request fields these uploads give, in the request's order."""
        given = [name for name in VIDEO_FIELDS if getattr(self, name) is not None]
        return given + (["reference_images"] if self.reference_images else [])

    def parts(self) -> list[tuple[str, bytes]]:
        """(storage name, bytes) of each upload, in the order `stored_parts` names them."""
        named = [(name, data) for name in VIDEO_FIELDS if (data := getattr(self, name)) is not None]
        return named + [(f"reference_{i}", data) for i, data in enumerate(self.reference_images)]


def _param(field: str) -> str:
    """The API's `param` for an input: the request field (`reference_images`, not `reference_images[1]`)."""
    return field.split("[", 1)[0]


def decode_uploads(uploads: EditUploads, limits: EditLimits) -> tuple[EditInputs, dict[str, Any]]:
    """The decoded inputs and the request's descriptions of them (`video`, `mask`, `reference_images`).

    InvalidRequest naming the field for more reference images than allowed (before any is decoded), an
    empty, corrupt or unaccepted file, one over a byte, frame or pixel limit. CPU work: run it on a thread.
    """
    if len(uploads.reference_images) > limits.max_reference_images:
        raise InvalidRequest(
            f"reference_images: {len(uploads.reference_images)} given, at most {limits.max_reference_images} accepted",
            param="reference_images",
        )
    frames: dict[str, Any] = {}
    described: dict[str, Any] = {}
    for name in VIDEO_FIELDS:
        data = getattr(uploads, name)
        if data is None:
            continue
        try:
            frames[name] = load_video(
                data,
                name,
                max_bytes=limits.max_video_bytes,
                max_frames=limits.max_video_frames,
                max_pixels=limits.max_video_pixels,
            )
        except VideoInputError as exc:
            raise InvalidRequest(str(exc), param=name) from None
        described[name] = describe_video(data, frames[name])
    images, refs = [], []
    for i, data in enumerate(uploads.reference_images):
        field = f"reference_images[{i}]"
        try:
            images.append(load_image(data, limits.max_image_bytes, limits.max_image_pixels, field))
            refs.append(describe_image(data, field))
        except ImageInputError as exc:
            raise InvalidRequest(str(exc), param=_param(exc.param)) from None
    if refs:
        described["reference_images"] = refs
    inputs = EditInputs(video=frames.get("video"), mask=frames.get("mask"), reference_images=images or None)
    return inputs, described


def stored_parts(request: GenerationRequest) -> list[tuple[str, str, InputVideo | InputImage]]:
    """(request field, storage name, description) of each input a request describes (EditUploads.parts' order)."""
    out: list[tuple[str, str, InputVideo | InputImage]] = [
        (name, name, described) for name in VIDEO_FIELDS if (described := getattr(request, name)) is not None
    ]
    for i, ref in enumerate(request.reference_images or []):
        out.append((f"reference_images[{i}]", f"reference_{i}", ref))
    return out


def decode_stored(request: GenerationRequest, blobs: Sequence[bytes]) -> EditInputs:
    """The inputs of an accepted job from their stored bytes (one per `stored_parts` entry, in its order).

    ValueError naming the field if a blob is not the one the request describes (its sha256). Admission
    checked them against the configured limits; the bounds here restate what was accepted.
    """
    parts = stored_parts(request)
    if len(blobs) != len(parts):
        raise ValueError(f"{len(blobs)} stored inputs for the {len(parts)} the request describes")
    decoded: dict[str, Any] = {}
    images = []
    for (field, _, described), data in zip(parts, blobs, strict=True):
        if hashlib.sha256(data).hexdigest() != described.sha256:
            raise ValueError(f"{field}: the stored input is not the one the job was accepted with")
        pixels = described.width * described.height
        if isinstance(described, InputVideo):
            decoded[field] = load_video(
                data, field, max_bytes=len(data), max_frames=described.num_frames, max_pixels=pixels
            )
        else:
            images.append(load_image(data, len(data), pixels, field))
    return EditInputs(video=decoded.get("video"), mask=decoded.get("mask"), reference_images=images or None)
