"""`srserve calibrate-mag`: measure a pair's MagCache ratios and write them where a config names them."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from srserve.cli.generate import add_model_pair_arguments, model_pair_from_args
from srserve.cli.progress import quiet_loading_bars
from srserve.engine.request import GenerationRequest, describe_validation_error


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate-mag",
        help="measure the sketch and render models' MagCache ratios (one full run each) and write them to a file",
    )
    add_model_pair_arguments(p)
    p.add_argument("--prompt", default="a calibration scene: a city street at dusk, people walking")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pair's); ratios resample")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the ratios file (name it in a pool's cache: ratios_file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_loading_bars()
    from srserve.engine import SRDiffusionEngine
    from srserve.engine.denoising.mag_calibration import calibrate, write_ratios

    try:
        request = GenerationRequest(
            prompt=args.prompt,
            num_inference_steps=args.steps,
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            seed=args.seed,
        )
        engine = SRDiffusionEngine(model_pair_from_args(args))
    except ValidationError as exc:
        print(f"error: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = calibrate(engine, request)
    path = write_ratios(data, args.out)
    print(f"wrote {path}: {data['num_inference_steps']} steps, sketch and render ratios")
    return 0
