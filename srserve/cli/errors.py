"""How every srserve command reports a start-up or config error: one line on stderr, exit code 2.

A StartupError (srserve.serving.config.errors; ConfigError is one) names the file, field or variable
at fault and what to do about it. The traceback behind it says nothing more to someone who mistyped a
path or forgot a variable, so it is printed only with --debug.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from srserve.serving.config.errors import StartupError

EXIT_STARTUP = 2  # as argparse's own usage errors


def add_debug_flag(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    parser.add_argument(
        "--debug", action="store_true", default=default, help="on a start-up error, print its traceback too"
    )


def run_reporting(command: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command; a StartupError becomes one `error: ...` line on stderr and exit code 2."""
    try:
        return int(command(args) or 0)
    except StartupError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_STARTUP
