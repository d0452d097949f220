"""Entry point: `srserve <command>`.

Each command's module is imported only when that command runs (all of them for `srserve --help`):
some pull in the diffusion engine, seconds of imports that `srserve serve` on a bad file should not wait for.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from srserve.cli.errors import add_debug_flag, run_reporting

# command -> the module whose add_parser(sub) registers it, in the order `--help` lists them.
COMMANDS = {
    "generate": "srserve.cli.generate",
    "calibrate-mag": "srserve.cli.calibrate",
    "make-tiny": "srserve.cli.make_tiny",
    "serve": "srserve.cli.serve",
    "client": "srserve.cli.client",
    "demo": "srserve.cli.demo",
    "bench": "srserve.cli.bench",
    "plan": "srserve.cli.plan",
    "profile": "srserve.cli.profile",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` alone, or for every command."""
    parser = argparse.ArgumentParser(prog="srserve", description="SRDiffusion video generation and serving")
    add_debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).add_parser(sub)
    for subparser in sub.choices.values():
        add_debug_flag(subparser)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command named on the command line, if it is one (options before it are srserve's own)."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command(argv)
    args = build_parser(command).parse_args(argv)
    return run_reporting(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
