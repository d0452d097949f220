"""The schedule flags (`--scheduler`, `--timesteps`, `--sigmas`, `--shift`), one definition for `srserve
generate` (in-process) and `srserve client` (gRPC), so both spell a few-step request alike."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from srserve.engine.denoising.schedule import SCHEDULER_NAMES


def numbers(kind: type) -> Callable[[str], list]:
    """`1000,750,500,250` as a list of `kind` (argparse names the flag when it does not parse)."""

    def parse(text: str) -> list:
        return [kind(part) for part in text.split(",") if part.strip()]

    parse.__name__ = f"comma-separated {kind.__name__}s"
    return parse


def add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    """Each flag unset: the pair's default (srserve.engine.denoising.schedule)."""
    p.add_argument(
        "--scheduler", default=None, choices=list(SCHEDULER_NAMES), help="default: the model folder's (Wan: unipc)"
    )
    p.add_argument(
        "--timesteps",
        type=numbers(int),
        default=None,
        metavar="T1,T2,...",
        help="an explicit schedule before the shift, e.g. 1000,750,500,250 (sets --steps)",
    )
    p.add_argument(
        "--sigmas", type=numbers(float), default=None, metavar="S1,S2,...", help="as --timesteps, as sigmas in (0, 1]"
    )
    p.add_argument("--shift", type=float, default=None, help="flow shift (default: the model folder's)")
