"""The ``vkit`` command: one parser, one sub-command per module of :mod:`vkit.commands`.

Each command module exposes ``register(subparsers)``, which adds its sub-parser and sets
a ``handler`` default: a callable that takes the parsed ``argparse.Namespace`` and returns
an exit code. The Namespace stops at the handler, which turns it into typed settings at
once. Errors become one line on stderr and an exit code through :mod:`vkit.exit_codes`.
Nothing runs at import.

Commands are imported when chosen: :func:`command_module` imports a command's module
(a plain ``import`` statement per command, run only when called), and a command
line naming one command registers that one alone, so ``vkit gateway`` (the gateway
image's command) imports the gateway and what it needs, never the fit solver, vLLM's
launcher or httpx. ``vkit --help``, or a command line naming none, registers them all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from vkit import __version__
from vkit.exit_codes import HANDLED, exit_code_for, message_for

# The commands as typed, in --help order.
COMMANDS = (
    "plan",
    "launch",
    "capacity",
    "checkpoints",
    "gateway",
    "keys",
    "usage",
    "render",
    "up",
    "schedule",
)


def command_module(name: str) -> ModuleType:
    """The module of command ``name``, imported now (a plain import per command)."""
    match name:
        case "plan":
            from vkit.commands import plan

            return plan
        case "launch":
            from vkit.commands import launch

            return launch
        case "capacity":
            from vkit.commands import capacity

            return capacity
        case "checkpoints":
            from vkit.commands import checkpoint_catalog

            return checkpoint_catalog
        case "gateway":
            from vkit.commands import gateway

            return gateway
        case "keys":
            from vkit.commands import keys

            return keys
        case "usage":
            from vkit.commands import ledger_usage

            return ledger_usage
        case "render":
            from vkit.commands import render

            return render
        case "up":
            from vkit.commands import up

            return up
        case "schedule":
            from vkit.commands import replica_schedule

            return replica_schedule
    raise KeyError(name)


class VkitArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(chosen: str | None = None) -> VkitArgumentParser:
    """The parser of ``chosen`` alone when it names a command (no other command's module is
    imported), else of every command."""
    parser = VkitArgumentParser(
        prog="vkit",
        description="Deploy vLLM: plan the fit, launch engines, run the gateway.",
    )
    parser.add_argument("--version", action="version", version=f"vkit {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=VkitArgumentParser
    )
    names = [chosen] if chosen in COMMANDS else list(COMMANDS)
    for name in names:
        command_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except HANDLED as exc:
        print(f"vkit {args.command}: error: {message_for(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
