"""Entry point: `srserve <command>`."""

from __future__ import annotations

import argparse
import sys

from srserve.cli import bench, calibrate, client, demo, generate, make_tiny, plan, profile, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srserve", description="SRDiffusion video generation and serving")
    sub = parser.add_subparsers(dest="command", required=True)
    generate.add_parser(sub)
    calibrate.add_parser(sub)
    make_tiny.add_parser(sub)
    serve.add_parser(sub)
    client.add_parser(sub)
    demo.add_parser(sub)
    bench.add_parser(sub)
    plan.add_parser(sub)
    profile.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Loading bars for tiny local folders are noise next to srserve's own per-stage bars.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
