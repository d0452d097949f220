"""The decoded pixels of a video-editing request, and their check against what the request describes.

The request carries descriptions only (`video`, `mask`, `reference_images`: hashes, sizes, frame counts),
so it stays small enough to validate, log, store and hand off as JSON; the frames travel beside it to the
sketch stage, which builds the VACE context from them once.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from srserve.engine.request import GenerationRequest, InputVideo


@dataclass(frozen=True)
class EditInputs:
    """RGB frames of the video and mask, and the RGB reference images, as diffusers' WanVACEPipeline takes them."""

    video: list[Image.Image] | None = None
    mask: list[Image.Image] | None = None
    reference_images: list[Image.Image] | None = None

    def check(self, request: GenerationRequest) -> None:
        """ValueError naming the field unless each input is given exactly when described, as described."""
        _check_frames("video", self.video, request.video)
        _check_frames("mask", self.mask, request.mask)
        described = request.reference_images or []
        given = self.reference_images or []
        if len(given) != len(described):
            raise ValueError(f"reference_images: {len(given)} decoded, the request describes {len(described)}")
        for i, (image, ref) in enumerate(zip(given, described, strict=True)):
            _check_rgb(f"reference_images[{i}]", image)
            if image.size != (ref.width, ref.height):
                raise ValueError(
                    f"reference_images[{i}]: the image is {image.size[0]}x{image.size[1]}, the request describes "
                    f"{ref.width}x{ref.height}"
                )


def _check_rgb(field: str, image: Image.Image) -> None:
    if image.mode != "RGB":
        raise ValueError(f"{field}: frames and images must be RGB (the loaders convert them), not {image.mode}")


def _check_frames(field: str, frames: list[Image.Image] | None, described: InputVideo | None) -> None:
    if described is None:
        if frames is not None:
            raise ValueError(f"{field}: decoded frames were given, the request describes no {field}")
        return
    if frames is None:
        raise ValueError(f"{field}: the request describes a {field} ({described.shape()}); its frames were not given")
    if len(frames) != described.num_frames:
        raise ValueError(f"{field}: {len(frames)} frames decoded, the request describes {described.num_frames}")
    for i, frame in enumerate(frames):
        _check_rgb(field, frame)
        if frame.size != (described.width, described.height):
            raise ValueError(
                f"{field}: frame {i} is {frame.size[0]}x{frame.size[1]}, the request describes "
                f"{described.width}x{described.height}"
            )
