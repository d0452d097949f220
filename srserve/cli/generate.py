"""`srserve generate`: one request through both models in this process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from srserve.cli.progress import StageBars, quiet_loading_bars
from srserve.cli.schedule_flags import add_schedule_arguments
from srserve.engine.adapters.spec import AdapterConfig
from srserve.engine.config import EXPERT_FAMILIES, TINY_ALIASES, TINY_PAIRS, ModelPairConfig
from srserve.engine.denoising.cache import with_ratios_file
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.inputs.image import describe_image, load_image
from srserve.engine.inputs.video_input import describe_video, load_video
from srserve.engine.request import MAX_FRAMES, GenerationRequest, describe_validation_error

# torch, diffusers and the model families load only once the flags have been checked: a mistyped flag is
# refused at once, not after ten seconds of imports.

# The CLI's own limits on an --image, --reference-image, --video or --mask file (a server sets its own).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_VIDEO_BYTES = 1024 * 1024 * 1024


def add_model_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-pair",
        default="tiny",
        help="tiny (embedded Wan2.1, default), tiny-wan2.2 (embedded Wan2.2 A14B), tiny-cogvideox (embedded "
        "CogVideoX), tiny-wan2.1-i2v, tiny-wan2.2-i2v (embedded image-to-video pairs: give --image), "
        "tiny-wan2.1-vace (embedded video-editing pair: --video, --mask, --reference-image, or --image as the "
        "first frame), or a family: "
        "wan2.1, wan2.2, cogvideox, wan2.1-i2v, wan2.2-i2v, wan2.1-vace",
    )
    parser.add_argument("--sketch-model", help="local Diffusers folder of the large (sketch) model")
    parser.add_argument("--render-model", help="local Diffusers folder of the small (render) model")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--guidance-scale-2",
        type=float,
        default=None,
        help="wan2.2, wan2.2-i2v: the render (low-noise) model's CFG scale",
    )


CLI_ADAPTER = "cli"  # the one adapter --sketch-lora / --render-lora make, which the request names


def _path_and_scale(text: str) -> tuple[str, float | None]:
    """`PATH` or `PATH:SCALE` (the last ':' starts a scale only when a number follows it)."""
    path, sep, tail = text.rpartition(":")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return text, None


def cli_adapters(args: argparse.Namespace) -> dict[str, AdapterConfig]:
    """The pair's adapters from `--sketch-lora PATH[:SCALE]` / `--render-lora PATH[:SCALE]`: one, `cli`.
    An adapter has one scale for both files, so two different scales are refused."""
    given = {side: getattr(args, f"{side}_lora", None) for side in ("sketch", "render")}
    if not any(given.values()):
        return {}
    files: dict[str, str | None] = {}
    scales = set()
    for side, text in given.items():
        files[side], scale = _path_and_scale(text) if text else (None, None)
        if text:
            scales.add(1.0 if scale is None else scale)
    if len(scales) > 1:
        raise ValueError("--sketch-lora and --render-lora take one scale (an adapter has one); give it to both")
    return {CLI_ADAPTER: AdapterConfig(sketch=files["sketch"], render=files["render"], scale=scales.pop())}


def model_pair_from_args(args: argparse.Namespace) -> ModelPairConfig:
    overrides: dict[str, object] = {}
    adapters = cli_adapters(args)
    if adapters:
        overrides["adapters"] = adapters
    if args.device:
        overrides["device"] = args.device
    if args.dtype:
        overrides["dtype"] = args.dtype
    if args.threads:
        overrides["num_threads"] = args.threads
    if getattr(args, "guidance_scale_2", None) is not None:
        overrides["guidance_scale_2"] = args.guidance_scale_2
    if args.model_pair in TINY_PAIRS or args.model_pair in TINY_ALIASES:
        if args.sketch_model or args.render_model:
            raise ValueError(f"--sketch-model/--render-model apply to a real pair, not --model-pair {args.model_pair}")
        return ModelPairConfig.tiny_pair(args.model_pair, **overrides)
    if not (args.sketch_model and args.render_model):
        raise ValueError(f"--model-pair {args.model_pair} needs --sketch-model PATH and --render-model PATH")
    render = args.render_model
    if args.model_pair in EXPERT_FAMILIES and render == args.sketch_model:
        from srserve.engine.families.wan22 import low_noise_expert_path

        render = low_noise_expert_path(render)  # one A14B folder: its low-noise expert renders
    return ModelPairConfig(
        family=args.model_pair,
        name=args.model_pair,
        sketch_path=args.sketch_model,
        render_path=render,
        **overrides,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate one video in this process (no Ray)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument(
        "--image",
        default=None,
        help="image-to-video pairs: the input image (PNG, JPEG or WebP); video-editing pairs: the first frame to "
        "keep (the rest generated; not with --video)",
    )
    p.add_argument(
        "--video",
        default=None,
        help="video editing (wan2.1-vace): the conditioning video (mp4); the output keeps its frame count and size",
    )
    p.add_argument(
        "--mask", default=None, help="video editing: the video's mask (mp4, same shape; white: regenerate, black: keep)"
    )
    p.add_argument(
        "--reference-image",
        action="append",
        default=None,
        metavar="IMAGE",
        help="video editing: a reference image (PNG, JPEG or WebP); repeat for more",
    )
    p.add_argument(
        "--conditioning-scale", type=float, default=None, help="video editing: the VACE context's scale (default 1)"
    )
    add_model_pair_arguments(p)
    p.add_argument(
        "--switch",
        default=None,
        help="fixed:STEP, fixed:FRACTION, adaptive[:TAU[:MIN:MAX]], or boundary (wan2.2, wan2.2-i2v: the model's "
        "own switch step, their default; other pairs default to adaptive)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="step caches: KIND[:N] for both stages or sketch=KIND[:N],render=KIND[:N]; KIND: none, "
        "first_block[:THRESHOLD], taylorseer[:INTERVAL], mag[:THRESHOLD] (mag needs --mag-ratios)",
    )
    p.add_argument("--mag-ratios", default=None, help="the file `srserve calibrate-mag` wrote (for a mag cache)")
    p.add_argument(
        "--sketch-lora", default=None, metavar="PATH[:SCALE]", help="a LoRA file for the sketch model (scale 1.0)"
    )
    p.add_argument(
        "--render-lora", default=None, metavar="PATH[:SCALE]", help="a LoRA file for the render model (scale 1.0)"
    )
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pair's)")
    p.add_argument("--frames", type=int, default=None, help="frames, 4k+1 (default: the pair's)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument(
        "--guidance-scale", type=float, default=None, help="CFG scale; 1: one transformer forward per step (default: 5)"
    )
    add_schedule_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--out", default="video.mp4", help="output mp4 path")
    p.add_argument("--handoff-out", default=None, help="also write the handoff state (to render elsewhere)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag}: {exc}") from exc


def _edit_inputs(args: argparse.Namespace, request: GenerationRequest) -> tuple[GenerationRequest, EditInputs | None]:
    """The request with its editing inputs described, and their decoded pixels (None when it gives none)."""
    update: dict[str, object] = {}
    if args.conditioning_scale is not None:
        update["conditioning_scale"] = args.conditioning_scale
    frames: dict[str, list] = {}
    for name in ("video", "mask"):
        path = getattr(args, name)
        if path:
            data = _read(path, f"--{name}")
            limits = {"max_bytes": MAX_VIDEO_BYTES, "max_frames": MAX_FRAMES, "max_pixels": MAX_IMAGE_PIXELS}
            frames[name] = load_video(data, name, **limits)
            update[name] = describe_video(data, frames[name])
    references = []
    for i, path in enumerate(args.reference_image or []):
        data, param = _read(path, "--reference-image"), f"reference_images[{i}]"
        references.append((load_image(data, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, param), describe_image(data, param)))
    if references:
        update["reference_images"] = [described for _, described in references]
    if not update:
        return request, None
    # Validated as a whole (model_copy would not): a mask unlike its video is refused here, naming mask.
    request = GenerationRequest.model_validate({**request.model_dump(exclude_unset=True), **update})
    if not (frames or references):
        return request, None
    edit = EditInputs(
        video=frames.get("video"),
        mask=frames.get("mask"),
        reference_images=[image for image, _ in references] or None,
    )
    return request, edit


def run(args: argparse.Namespace) -> int:
    try:
        boundary = args.switch == "boundary"
        request = GenerationRequest(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            scheduler=args.scheduler,
            timesteps=args.timesteps,
            sigmas=args.sigmas,
            shift=args.shift,
            seed=args.seed,
            lora=CLI_ADAPTER if args.sketch_lora or args.render_lora else None,
            switch="adaptive" if args.switch in (None, "boundary") else args.switch,
            fps=args.fps,
            cache=args.cache,
        )
        image = None
        if args.image:
            data = Path(args.image).read_bytes()
            image = load_image(data, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS)
            request = request.model_copy(update={"input_reference": describe_image(data)})
        request, edit = _edit_inputs(args, request)
        if request.cache is not None and args.mag_ratios:
            request = request.model_copy(update={"cache": with_ratios_file(request.cache, args.mag_ratios)})
        config = model_pair_from_args(args)
        from srserve.engine.engine import SRDiffusionEngine
        from srserve.engine.families import check_edit_inputs, check_input_image
        from srserve.engine.families.wan22 import Wan22Family

        quiet_loading_bars()
        check_input_image(config.family, request, image)  # before any weights load
        check_edit_inputs(config.family, request, edit)
        engine = SRDiffusionEngine(config)
        boundary = boundary or (args.switch is None and config.family in EXPERT_FAMILIES)
        if boundary:
            if not isinstance(engine.family, Wan22Family):
                raise ValueError(
                    f"--switch boundary: family {config.family} has no expert boundary "
                    f"({', '.join(EXPERT_FAMILIES)} have)"
                )
            resolved = engine.resolve(request)
            switch = engine.family.boundary_switch(resolved.num_inference_steps, resolved)
            request = request.model_copy(update={"switch": switch})
        engine.check_image(engine.resolve(request), image)
    except OSError as exc:
        print(f"error: --image: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:  # IncompatiblePairError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bars = StageBars(enabled=not args.no_progress)
    try:
        result = engine.generate(request, image=image, edit=edit, on_step=bars)
    finally:
        bars.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.video)
    if args.handoff_out:
        Path(args.handoff_out).write_bytes(result.handoff)
        print(f"wrote the handoff state to {args.handoff_out} ({len(result.handoff)} bytes)")
    if result.lora is not None:
        sides = [side for side in ("sketch", "render") if result.lora.on(side)]
        print(f"LoRA at scale {result.lora.scale} on the {' and '.join(sides)} model")
    frames, height, width, _ = result.frames.shape
    print(f"wrote {out} ({frames} frames, {width}x{height}, {len(result.video)} bytes)")
    print(
        f"switch step: {result.switch_step} of {result.num_steps} (sketch {result.switch_step}, "
        f"render {result.num_steps - result.switch_step}); handoff {result.handoff_bytes} bytes"
    )
    total = sum(result.timings.values())
    print("timing:")
    for name, seconds in result.timings.items():
        print(f"  {name:<20} {seconds * 1000:9.1f} ms")
    print(f"  {'total':<20} {total * 1000:9.1f} ms")
    return 0
