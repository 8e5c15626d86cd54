"""The benchmark's own venvs, each built once under ``.vkit/bench/``, none of them the dev venv.

- :func:`shipped_python`: the gateway as the image installs it -- a fresh venv with the image's
  ``gateway-requirements.txt`` (``--no-deps``, the lock's versions) and the kit itself
  installed from this checkout (not editable), as the Dockerfile's build stage does. The venv
  is rebuilt when the requirements change; the kit is reinstalled on every run, so it is this
  checkout's code. The dev venv has more (vLLM's dependencies): measuring there once hid that
  the image ran without uvloop and httptools (docs/gateway-cost.md#event-loop-and-http-parser).
- :func:`tool_binary`: a peer proxy's command (LiteLLM, SMG), ``pip install``-ed into a venv of
  its own on first use.

Each returns ``None`` with a printed reason when the install fails, and the run skips the target.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".vkit" / "bench"
IMAGE_REQUIREMENTS = ROOT / "vkit" / "render" / "gateway-requirements.txt"
_NOT_THE_KIT = (".git", ".vkit", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache")


def clean_env() -> dict[str, str]:
    """This process's environment without what points Python at the checkout or the dev venv."""
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _pip(venv: Path, args: list[str], log: Path, timeout: float = 900) -> None:
    with log.open("ab") as out:
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
            check=True,
            timeout=timeout,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            cwd=CACHE,
        )


def _new_venv(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, env=clean_env())


def shipped_python() -> Path | None:
    """The python of a venv holding what the gateway image installs (see the module doc)."""
    digest = hashlib.sha256(IMAGE_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = CACHE / "shipped-venv"
    stamp = venv / "requirements.sha256"
    log = CACHE / "shipped-install.log"
    try:
        if not stamp.exists() or stamp.read_text() != digest:
            print("building the image's environment (once per requirements file)...", flush=True)
            _new_venv(venv)
            _pip(venv, ["--no-deps", "-r", str(IMAGE_REQUIREMENTS)], log)
            stamp.write_text(digest)
        # The kit from this checkout, as `pip install --no-deps .` in the build stage; from a
        # copy, so setuptools' build/ is not left in (nor stale files taken from) the checkout.
        with tempfile.TemporaryDirectory(prefix="vkit-kit-") as tmp:
            ignored = shutil.ignore_patterns(*_NOT_THE_KIT)
            shutil.copytree(ROOT, Path(tmp) / "kit", ignore=ignored)
            _pip(venv, ["--no-deps", "--force-reinstall", str(Path(tmp) / "kit")], log)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"the image's environment could not be built ({exc}; see {log})")
        return None
    return venv / "bin" / "python"


def tool_binary(name: str, requirement: str, command: str) -> Path | None:
    """``command`` of ``requirement`` installed in ``.vkit/bench/NAME-venv`` (once)."""
    venv = CACHE / f"{name}-venv"
    binary = venv / "bin" / command
    if binary.exists():
        return binary
    print(f"installing {requirement} into its own venv (once)...", flush=True)
    try:
        _new_venv(venv)
        _pip(venv, [requirement], CACHE / f"{name}-install.log")
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"{requirement} could not be installed ({exc}): skipped")
        return None
    return binary if binary.exists() else None
