"""The demo key ``vkit up`` prints: made with the gateway's own key-file code.

Only the key's SHA-256 goes into the keys file; the secret is returned once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from gateway.keyfile import KeyFileError, KeyNameTaken, add_key
from vkit.exit_codes import CliError, format_validation_error
from vkit.stack.up_settings import DemoKeyLimits


def add_demo_key(keys_file: Path, name: str, limits: DemoKeyLimits, models: Sequence[str]) -> str:
    """Add key ``name`` to ``keys_file`` and return its secret."""
    try:
        return add_key(keys_file, name, **limits.model_dump(), models=tuple(models))
    except ValidationError as exc:
        reason = format_validation_error(exc)
    except (KeyFileError, KeyNameTaken) as exc:
        reason = str(exc)
    except OSError as exc:
        reason = f"{keys_file}: {exc.strerror or exc}"
    raise CliError(f"could not create the demo key: {reason}")
