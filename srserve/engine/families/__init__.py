"""Registry of model families srserve can split into a sketch and a render model."""

from __future__ import annotations

from PIL import Image

from srserve.engine.config import ModelPairConfig
from srserve.engine.families.base import EncodedPrompt, IncompatiblePairError, ModelFamily
from srserve.engine.families.cogvideox import CogVideoXFamily
from srserve.engine.families.wan import WanFamily
from srserve.engine.families.wan22 import Wan22Family
from srserve.engine.families.wan_i2v import Wan22I2VFamily, WanI2VFamily
from srserve.engine.families.wan_vace import Wan22VACEFamily, WanVACEFamily
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.request import EDIT_FIELDS, GenerationRequest

_FAMILIES: dict[str, type[ModelFamily]] = {
    WanFamily.name: WanFamily,
    Wan22Family.name: Wan22Family,
    CogVideoXFamily.name: CogVideoXFamily,
    WanI2VFamily.name: WanI2VFamily,
    Wan22I2VFamily.name: Wan22I2VFamily,
    WanVACEFamily.name: WanVACEFamily,
    Wan22VACEFamily.name: Wan22VACEFamily,
}


def get_family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def takes_image(family: str) -> bool:
    """Whether the family's requests need an input image (`input_reference`)."""
    return get_family(family).takes_image


def accepts_image(family: str) -> bool:
    """Whether the family's requests may give an input image (`input_reference`): image-to-video pairs need
    one; video-editing (VACE) pairs take one as a first-frame condition, instead of a video."""
    f = get_family(family)
    return f.takes_image or f.first_frame_image


def check_input_image(family: str, request: GenerationRequest, image: Image.Image | None = None) -> None:
    """ValueError naming `input_reference` unless the request has an input image exactly when the family takes
    one: always for image-to-video, optionally for video editing (the first frame; then no `video`).

    With `image` None only the request's description is checked: what an ingress can run before reading the
    bytes. With an image, the request must describe one, of the image's size.
    """
    ref = request.input_reference
    if takes_image(family) and ref is None:
        raise ValueError(f"input_reference: the {family} pair generates from an image; the request has none")
    if not accepts_image(family):
        if ref is not None or image is not None:
            raise ValueError(f"input_reference: the {family} pair is text-to-video and takes no input image")
        return
    if ref is None:
        if image is not None:
            raise ValueError("input_reference: an image was given; the request describes none")
        return
    if request.video is not None and edits_video(family):
        raise ValueError(
            f"input_reference: on the {family} pair the input image is the first frame of the conditioning video "
            "it stands for; the request gives a video too (put the image in the video and mark it kept in its mask)"
        )
    if image is not None and image.size != (ref.width, ref.height):
        raise ValueError(
            f"input_reference: the image is {image.size[0]}x{image.size[1]}, the request describes "
            f"{ref.width}x{ref.height}"
        )


def edits_video(family: str) -> bool:
    """Whether the family's requests may give a video, mask and reference images (video editing, VACE)."""
    return get_family(family).edits_video


def check_edit_inputs(family: str, request: GenerationRequest, inputs: EditInputs | None = None) -> None:
    """ValueError naming the field unless the request's editing inputs are ones the family takes.

    With `inputs` None only the request's description is checked (what an ingress can run before it decodes
    any bytes); with the decoded inputs, each must be given exactly when described, as described.
    """
    if not edits_video(family):
        vace = ", ".join(name for name in family_names() if edits_video(name))
        for name in EDIT_FIELDS:
            if getattr(request, name) is not None:
                raise ValueError(f"{name}: the {family} pair does not edit video (a VACE pair does: {vace})")
        if inputs is not None:
            raise ValueError(f"video: the {family} pair does not edit video; decoded editing inputs were given")
        return
    if inputs is not None:
        inputs.check(request)


def check_pair(config: ModelPairConfig) -> None:
    """The pair's family's check that its folders fit together (no weights load); IncompatiblePairError names
    the misfit. What serving runs when it reads a pool's model, before any replica starts."""
    family = get_family(config.family)
    family.check_pair(config)
    check_pair_schedule(family, config)


def check_pair_schedule(family: ModelFamily, config: ModelPairConfig) -> None:
    """IncompatiblePairError unless the pair's default schedule is one its family runs (within its bounds)."""
    problems = config.schedule.problems(config.defaults, family.name, family.schedulers)
    if problems:
        raise IncompatiblePairError("defaults: " + "; ".join(problems))


def check_schedule(family: ModelFamily, config: ModelPairConfig, request: GenerationRequest) -> None:
    """ValueError, naming each field, unless a (resolved) request's schedule is one the family runs within the
    pair's bounds (ModelPairConfig.schedule)."""
    problems = config.schedule.problems(request, family.name, family.schedulers)
    cache = request.cache
    if not family.step_caches and cache is not None:
        for stage, policy in (("sketch", cache.sketch), ("render", cache.render)):
            if policy is not None and policy.enabled:
                problems.append(
                    f"cache: the {family.name} pair runs no step caches yet (a {stage} {policy.kind!r} cache was "
                    "not checked against its model's blocks); set cache 'none'"
                )
                break
    if problems:
        raise ValueError("; ".join(problems))


__all__ = [
    "EncodedPrompt",
    "IncompatiblePairError",
    "ModelFamily",
    "accepts_image",
    "check_edit_inputs",
    "check_input_image",
    "check_pair",
    "check_pair_schedule",
    "check_schedule",
    "edits_video",
    "family_names",
    "get_family",
    "takes_image",
]
