"""How the ``vkit`` command ends: error classes -> exit codes and one-line messages.

The packages below the CLI raise plain exceptions of their own (``launcher.errors``,
``gateway.keyfile.KeyFileError``, ``gateway.ledger.LedgerError``, pydantic's
``ValidationError``); only this table knows which exit code each one means. The CLI's own
errors live here too:

    CliError          -- a clear, expected failure of a command (exit 1 unless told otherwise)
      UsageError      -- bad flag values or arguments (exit 2, like argparse)

    >>> exit_code_for(UnknownGpuError("unknown GPU 'x'"))
    2
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.keyfile import KeyFileError, KeyNameTaken
from gateway.ledger.store import LedgerError
from launcher.errors import InvalidInput, LauncherError

USAGE = 2  # argparse's own code for bad arguments
FAILURE = 1


class CliError(Exception):
    """A failure the user can act on; its message is printed as one line."""

    exit_code = FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    """Bad arguments: exit code 2, as argparse uses for its own errors."""

    exit_code = USAGE


# First match wins: the more specific class first. CliError carries its own code.
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInput, USAGE),
    (LauncherError, FAILURE),
    (ValidationError, USAGE),
    (SettingsError, USAGE),
    (KeyNameTaken, USAGE),
    (KeyFileError, FAILURE),
    (LedgerError, FAILURE),  # the ledger's database unreachable, or newer than the gateway
)

HANDLED: tuple[type[Exception], ...] = (CliError, *(cls for cls, _ in EXIT_CODES))


def exit_code_for(exc: Exception) -> int:
    """The exit code for an error the CLI handles (see :data:`HANDLED`)."""
    if isinstance(exc, CliError):
        return exc.exit_code
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    raise TypeError(f"not an error the CLI maps: {type(exc).__name__}")


def message_for(exc: Exception) -> str:
    """What follows ``vkit CMD: error:``. One line, except a :class:`CliError` that quotes a
    log on purpose (``vkit up``'s failed process)."""
    if isinstance(exc, CliError):
        return str(exc)
    text = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def format_validation_error(exc: ValidationError) -> str:
    """``field: message; other.field: message`` on one line."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or exc.title
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
