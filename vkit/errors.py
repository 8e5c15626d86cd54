"""Errors that the ``vkit`` command turns into one line on stderr and an exit code.

    CliError          -- a clear, expected failure (exit 1 unless told otherwise)
      UsageError      -- bad flag values or arguments (exit 2, like argparse)

Any ``pydantic.ValidationError`` that reaches the entry point is rendered the same
way by :func:`format_validation_error`.
"""

from __future__ import annotations

from pydantic import ValidationError


class CliError(Exception):
    """A failure the user can act on; its message is printed as one line."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    """Bad arguments: exit code 2, as argparse uses for its own errors."""

    exit_code = 2


def format_validation_error(exc: ValidationError) -> str:
    """``field: message; other.field: message`` on one line."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or exc.title
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
