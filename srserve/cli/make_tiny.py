"""`srserve make-tiny DIR`: write a family's tiny random-weight pair in Diffusers format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from srserve.cli.progress import quiet_loading_bars
from srserve.engine.tiny import TINY_LAYOUTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="write a tiny sketch/render pair (random weights) to DIR")
    p.add_argument("dir")
    p.add_argument(
        "--family", default="wan2.1", choices=sorted(TINY_LAYOUTS), help="which family's pair (default wan2.1)"
    )
    p.set_defaults(func=run)
    p.add_argument(
        "--loras",
        metavar="LORA_DIR",
        default=None,
        help="wan2.1: also write random LoRA adapters for the pair to LORA_DIR (sketch_lora.safetensors, "
        "render_lora.safetensors, and sketch_lora_comfy.safetensors in ComfyUI-style keys)",
    )
    p.set_defaults(func=run_with_loras)  # run, then the adapters


def run(args: argparse.Namespace) -> int:
    quiet_loading_bars()
    # Each family's writer and layout (srserve.engine.tiny.TINY_LAYOUTS): wan2.2, -i2v and -vace write one
    # A14B-shaped folder, whose sketch is the folder (high-noise expert) and render its transformer_2.
    sketch, render = TINY_LAYOUTS[args.family].write(args.dir)
    print(f"sketch model: {sketch}\nrender model: {render}")
    image = " --image IMAGE.png" if args.family.endswith("-i2v") else ""
    if args.family.endswith("-vace"):
        image = " [--video VIDEO.mp4 [--mask MASK.mp4]] [--reference-image IMAGE.png ...]"
    print(
        f"use: srserve generate --model-pair {args.family} --sketch-model {sketch} --render-model {render}{image} ..."
    )
    return 0


def run_with_loras(args: argparse.Namespace) -> int:
    """`run`, then (`--loras LORA_DIR`) the tiny Wan2.1 pair's LoRA adapters (srserve.engine.tiny.lora)."""
    if args.loras and args.family != "wan2.1":
        print(f"error: --loras writes adapters for the tiny wan2.1 pair, not {args.family}", file=sys.stderr)
        return 2
    code = run(args)
    if code or not args.loras:
        return code
    from srserve.engine.tiny import TINY_LAYOUTS
    from srserve.engine.tiny.lora import RENDER_LORA, SKETCH_LORA, write_tiny_loras

    files = write_tiny_loras(args.loras, *TINY_LAYOUTS["wan2.1"].folders(Path(args.dir)))
    for path in files.values():
        print(f"LoRA: {path}")
    print(f"with adapters: srserve generate ... --sketch-lora {files[SKETCH_LORA]} --render-lora {files[RENDER_LORA]}")
    return 0
