"""`srserve make-tiny DIR`: write a family's tiny random-weight pair in Diffusers format."""

from __future__ import annotations

import argparse

from srserve.engine.tiny import TINY_LAYOUTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="write a tiny sketch/render pair (random weights) to DIR")
    p.add_argument("dir")
    p.add_argument(
        "--family", default="wan2.1", choices=sorted(TINY_LAYOUTS), help="which family's pair (default wan2.1)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Each family's writer and layout (srserve.engine.tiny.TINY_LAYOUTS): wan2.2 and wan2.2-i2v write one
    # A14B-shaped folder, whose sketch is the folder (high-noise expert) and render its transformer_2.
    sketch, render = TINY_LAYOUTS[args.family].write(args.dir)
    print(f"sketch model: {sketch}\nrender model: {render}")
    image = " --image IMAGE.png" if args.family.endswith("-i2v") else ""
    print(
        f"use: srserve generate --model-pair {args.family} --sketch-model {sketch} --render-model {render}{image} ..."
    )
    return 0
