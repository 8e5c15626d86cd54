"""The ``vkit`` command: one parser, one sub-command per module.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds
its sub-parser and sets a ``handler`` default: a callable that takes the parsed
``argparse.Namespace`` and returns an exit code. The Namespace stops at the handler,
which turns it into typed settings at once. Nothing runs at import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError

from vkit import __version__
from vkit.errors import CliError, format_validation_error

COMMAND_MODULES: tuple[str, ...] = (
    "launcher.commands.plan",
    "launcher.commands.launch",
    "launcher.commands.capacity",
    "gateway.commands.serve",
    "gateway.commands.keys",
    "vkit.commands.render",
    "vkit.commands.up",
)


class VkitArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> VkitArgumentParser:
    parser = VkitArgumentParser(
        prog="vkit",
        description="Deploy vLLM: plan the fit, launch engines, run the gateway.",
    )
    parser.add_argument("--version", action="version", version=f"vkit {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=VkitArgumentParser
    )
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CliError as exc:
        print(f"vkit {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:
        print(f"vkit {args.command}: error: {format_validation_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
