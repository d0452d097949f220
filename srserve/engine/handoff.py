"""The handoff state: everything a render worker needs to continue a sketch exactly.

Wire format (version 4): one safetensors blob. Tensors are stored natively (bf16 stays bf16);
everything else is a JSON document in the safetensors metadata under `srserve.handoff`. Parsing
never executes code, so a blob from an untrusted client is safe to load.

Version 2 adds the image conditioning of image-to-video pairs, as optional tensors: `image_condition`
(the first-frame mask and VAE latents the transformer reads beside the noisy latent) and
`image_embeds` (CLIP image embeddings, where the models take them). Version 1 (text-to-video only)
had neither and still parses: its state simply has none.

Version 3 adds the request's schedule fields (`scheduler`, `timesteps`, `sigmas`, `shift`; see
srserve.engine.denoising.schedule), which the render side needs to rebuild the sketch's scheduler, and its
resolved `guidance_scale` as before. Versions 1 and 2 still parse: their requests name no schedule
(the folder's), and one that does is refused (an older writer could not have made it).

Version 4 adds video editing (VACE pairs): the `vace_context` tensor (the VAE latents of the
conditioning video's kept and regenerated parts and the downsampled mask, reference images first,
built once on the sketch side), `reference_frames` in the header (the latents' leading frames that are
reference images, which the render drops before decoding), and the request's editing fields (`video`,
`mask`, `reference_images` as descriptions, `conditioning_scale`). Versions 1 to 3 still parse; one
carrying a VACE context or editing fields is refused (an older writer could not have made it).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from srserve.engine.denoising.schedule import SCHEDULE_FIELDS
from srserve.engine.denoising.scheduler_state import SchedulerSnapshot
from srserve.engine.request import EDIT_FIELDS, ResolvedRequest

FORMAT_NAME = "srserve.handoff"
FORMAT_VERSION = 4
# Versions this srserve reads: 1 is 2 without the image tensors, 2 is 3 without the request's schedule,
# 3 is 4 without video editing.
READABLE_VERSIONS = (1, 2, 3, 4)
MAX_HEADER_BYTES = 16 * 1024 * 1024
_IMAGE_TENSORS = ("image_condition", "image_embeds")


class HandoffFormatError(ValueError):
    """A handoff blob that cannot be parsed, or was written by an incompatible version."""


@dataclass
class HandoffState:
    """The sketch stage's output and the render stage's input."""

    family: str
    request: ResolvedRequest
    switch_step: int
    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    generator_state: torch.Tensor
    scheduler: SchedulerSnapshot
    timesteps: torch.Tensor
    sigmas: torch.Tensor | None = None
    job_id: str = ""
    switch_trace: list[float] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    # Image-to-video: [B, mask + latent channels, F, H, W] and [B, tokens, image_dim] (None for text-to-video).
    image_condition: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    # Video editing (VACE): [B, 2 x z_dim + mask channels, reference + video latent frames, H, W], and how many
    # of the latents' leading frames are reference images (dropped before decoding).
    vace_context: torch.Tensor | None = None
    reference_frames: int = 0

    @property
    def num_steps(self) -> int:
        return self.request.num_inference_steps

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {
            "latents": self.latents,
            "prompt_embeds": self.prompt_embeds,
            "generator_state": self.generator_state,
            "timesteps": self.timesteps,
        }
        if self.negative_prompt_embeds is not None:
            tensors["negative_prompt_embeds"] = self.negative_prompt_embeds
        if self.sigmas is not None:
            tensors["sigmas"] = self.sigmas
        if self.image_condition is not None:
            tensors["image_condition"] = self.image_condition
        if self.image_embeds is not None:
            tensors["image_embeds"] = self.image_embeds
        if self.vace_context is not None:
            tensors["vace_context"] = self.vace_context
        for name, tensor in self.scheduler.tensors.items():
            tensors[f"scheduler/{name}"] = tensor
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "family": self.family,
            "job_id": self.job_id,
            "switch_step": self.switch_step,
            "request": self.request.model_dump(mode="json"),
            "scheduler": {"class_name": self.scheduler.class_name, "values": self.scheduler.values},
            "switch_trace": self.switch_trace,
            "extras": self.extras,
            "reference_frames": self.reference_frames,
        }
        return st_save(tensors, metadata={FORMAT_NAME: json.dumps(header)})

    @classmethod
    def from_bytes(cls, blob: bytes) -> HandoffState:
        header = _read_header(blob)
        try:
            tensors = st_load(blob)
        except Exception as exc:  # safetensors raises its own error types
            raise HandoffFormatError(f"handoff tensors do not parse: {exc}") from exc
        try:
            sched = header["scheduler"]
            snapshot = SchedulerSnapshot(
                class_name=str(sched["class_name"]),
                tensors={k.removeprefix("scheduler/"): v for k, v in tensors.items() if k.startswith("scheduler/")},
                values=dict(sched["values"]),
            )
            return cls(
                family=str(header["family"]),
                request=ResolvedRequest.model_validate(header["request"]),
                switch_step=int(header["switch_step"]),
                latents=tensors["latents"],
                prompt_embeds=tensors["prompt_embeds"],
                negative_prompt_embeds=tensors.get("negative_prompt_embeds"),
                generator_state=tensors["generator_state"],
                scheduler=snapshot,
                timesteps=tensors["timesteps"],
                sigmas=tensors.get("sigmas"),
                job_id=str(header.get("job_id", "")),
                switch_trace=[float(x) for x in header.get("switch_trace", [])],
                extras=dict(header.get("extras", {})),
                image_condition=tensors.get("image_condition"),
                image_embeds=tensors.get("image_embeds"),
                vace_context=tensors.get("vace_context"),
                reference_frames=_reference_frames(header),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HandoffFormatError(f"handoff header is incomplete or invalid: {exc}") from exc


def _read_header(blob: bytes) -> dict[str, Any]:
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) < 8:
        raise HandoffFormatError("handoff blob is too short to be a safetensors file")
    (size,) = struct.unpack("<Q", bytes(blob[:8]))
    if size > MAX_HEADER_BYTES or 8 + size > len(blob):
        raise HandoffFormatError("handoff blob has an invalid header length")
    try:
        raw = json.loads(bytes(blob[8 : 8 + size]))
        meta = raw.get("__metadata__") or {}
        header = json.loads(meta[FORMAT_NAME])
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise HandoffFormatError("blob is not an srserve handoff (no srserve.handoff metadata)") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise HandoffFormatError("blob is not an srserve handoff")
    version = header.get("version")
    if version not in READABLE_VERSIONS:
        raise HandoffFormatError(
            f"handoff version {version!r} is not supported (this srserve reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    if version == 1 and any(key in raw for key in _IMAGE_TENSORS):
        raise HandoffFormatError("a version 1 handoff cannot carry image tensors (image-to-video needs version 2)")
    request = header.get("request")
    if version < 3 and isinstance(request, dict) and any(request.get(k) is not None for k in SCHEDULE_FIELDS):
        raise HandoffFormatError(
            f"a version {version} handoff cannot carry a request schedule (scheduler, timesteps, sigmas, shift: "
            "version 3)"
        )
    if version < 4:
        if "vace_context" in raw or header.get("reference_frames"):
            raise HandoffFormatError(
                f"a version {version} handoff cannot carry a VACE context or reference frames (video editing: "
                "version 4)"
            )
        if isinstance(request, dict) and any(request.get(k) is not None for k in EDIT_FIELDS):
            raise HandoffFormatError(
                f"a version {version} handoff cannot carry video-editing request fields ({', '.join(EDIT_FIELDS)}: "
                "version 4)"
            )
    return header


def _reference_frames(header: dict[str, Any]) -> int:
    """The header's reference-frame count (0 before version 4); a negative or non-integer one is refused."""
    value = header.get("reference_frames", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"reference_frames must be a non-negative integer, not {value!r}")
    return value
