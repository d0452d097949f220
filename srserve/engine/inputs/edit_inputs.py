"""The decoded pixels of a video-editing request, and their check against what the request describes.

The request carries descriptions only (`video`, `mask`, `reference_images`: hashes, sizes, frame counts),
so it stays small enough to validate, log, store and hand off as JSON; the frames travel beside it to the
sketch stage, which builds the VACE context from them once.

A request may instead give one image (`input_reference`, OpenAI's field) as the first frame to keep: the
conditioning video and mask are then built from it as diffusers documents WanVACEPipeline's image-to-video
(the image resized to the output size, then mid-gray frames; a black "keep" mask frame, then white ones).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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

    def with_first_frame(self, image: Image.Image, width: int, height: int, num_frames: int) -> EditInputs:
        """These inputs with the video and mask of a first-frame condition (diffusers' documented VACE
        image-to-video recipe): frame 0 the image resized to width x height, kept (mask black); every other
        frame gray (128, the recipe's stand-in for the original code's 127.5 on PIL images), regenerated (white)."""
        if self.video is not None or self.mask is not None:
            raise ValueError("input_reference: a first-frame condition builds the video and mask; a video was given")
        gray = Image.new("RGB", (width, height), (128, 128, 128))
        keep, regenerate = Image.new("L", (width, height), 0), Image.new("L", (width, height), 255)
        return replace(
            self,
            video=[image.resize((width, height)), *[gray] * (num_frames - 1)],
            mask=[keep, *[regenerate] * (num_frames - 1)],
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
