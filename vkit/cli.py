"""The ``vkit`` command: one parser, one sub-command per module of :mod:`vkit.commands`.

Each command module exposes ``register(subparsers)``, which adds its sub-parser and sets
a ``handler`` default: a callable that takes the parsed ``argparse.Namespace`` and returns
an exit code. The Namespace stops at the handler, which turns it into typed settings at
once. Errors become one line on stderr and an exit code through :mod:`vkit.exit_codes`.
Nothing runs at import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from vkit import __version__
from vkit.commands import (
    capacity,
    checkpoint_catalog,
    gateway,
    keys,
    launch,
    plan,
    render,
    up,
)
from vkit.exit_codes import HANDLED, exit_code_for, message_for

COMMANDS: tuple[ModuleType, ...] = (
    plan,
    launch,
    capacity,
    checkpoint_catalog,
    gateway,
    keys,
    render,
    up,
)


class VkitArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(commands: Sequence[ModuleType] = COMMANDS) -> VkitArgumentParser:
    parser = VkitArgumentParser(
        prog="vkit",
        description="Deploy vLLM: plan the fit, launch engines, run the gateway.",
    )
    parser.add_argument("--version", action="version", version=f"vkit {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=VkitArgumentParser
    )
    for command in commands:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except HANDLED as exc:
        print(f"vkit {args.command}: error: {message_for(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
