"""`srserve make-tiny DIR`: write the tiny random-weight pair in Diffusers format."""

from __future__ import annotations

import argparse

from srserve.engine.tiny import write_tiny_wan_pair


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="write a tiny Wan2.1 sketch/render pair (random weights) to DIR")
    p.add_argument("dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sketch, render = write_tiny_wan_pair(args.dir)
    print(f"sketch model: {sketch}\nrender model: {render}")
    print(f"use: srserve generate --model-pair wan2.1 --sketch-model {sketch} --render-model {render} ...")
    return 0
