"""Run ``deploy/systemd/install.sh`` as the systemd tests do: staged with ``--destdir``.

``systemd-analyze verify`` insists that ExecStart's binary exists, and install.sh rewrites the
units' ``/opt/vkit/venv/bin/vkit`` to ``--vkit-bin``: :func:`vkit_script` writes a small
``vkit`` that runs this interpreter's ``python -m vkit`` from the checkout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"


def vkit_script(directory: Path) -> Path:
    path = directory / "vkit"
    path.write_text(f'#!/bin/sh\ncd "{ROOT}" && exec "{sys.executable}" -m vkit "$@"\n')
    path.chmod(0o755)
    return path


def install(
    destdir: Path, vkit_bin: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(SYSTEMD / "install.sh"), "--destdir", str(destdir), "--vkit-bin", str(vkit_bin)]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )
