"""`srserve make-tiny DIR`: write the tiny random-weight pair in Diffusers format."""

from __future__ import annotations

import argparse

from srserve.engine.tiny import write_tiny_cogvideox_pair, write_tiny_wan22_pair, write_tiny_wan_pair

# wan2.2 writes one A14B-shaped folder: the sketch is the folder (high-noise expert), the render its transformer_2.
WRITERS = {"wan2.1": write_tiny_wan_pair, "wan2.2": write_tiny_wan22_pair, "cogvideox": write_tiny_cogvideox_pair}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="write a tiny sketch/render pair (random weights) to DIR")
    p.add_argument("dir")
    p.add_argument("--family", default="wan2.1", choices=sorted(WRITERS), help="which family's pair (default wan2.1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sketch, render = WRITERS[args.family](args.dir)
    print(f"sketch model: {sketch}\nrender model: {render}")
    print(f"use: srserve generate --model-pair {args.family} --sketch-model {sketch} --render-model {render} ...")
    return 0
