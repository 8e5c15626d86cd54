"""Create an API key through ``vkit keys add`` (the gateway's key code), return the secret.

The command's contract: it stores only the key's SHA-256 in the keys file and prints
the new secret once, alone on the last line of stdout.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from vkit.errors import CliError
from vkit.stack.settings import DemoKeyLimits


def keys_add_argv(
    python: str, keys_file: Path, name: str, limits: DemoKeyLimits, models: Sequence[str]
) -> list[str]:
    argv = [python, "-m", "vkit", "keys", "add", name, "--file", str(keys_file)]
    argv += ["--rpm", str(limits.rpm), "--tpm", str(limits.tpm)]
    argv += ["--concurrency", str(limits.concurrency), "--max-tokens", str(limits.max_tokens)]
    return [*argv, "--models", ",".join(models)] if models else argv


def add_key(
    python: str, keys_file: Path, name: str, limits: DemoKeyLimits, models: Sequence[str]
) -> str:
    """Add key ``name`` to ``keys_file`` and return its secret."""
    argv = keys_add_argv(python, keys_file, name, limits, models)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CliError(f"could not create the demo key with `vkit keys add`: {reason}")
    return lines[-1].strip()
