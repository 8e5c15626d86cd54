"""The kit as a user installs it: its wheel in a fresh venv, nothing of the checkout importable.

:func:`installed_kit` builds the wheel from a copy of the sources pyproject names, installs it
with ``--no-deps`` into a new venv, and gives that venv the test environment's dependencies
through a ``.pth`` line naming its site-packages directory (a plain path: the editable
install's own ``.pth`` files there are not processed, so the checkout is not importable; the
check is part of the build).
"""

from __future__ import annotations

import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from tests.test_packaging import clean_env, must, run, source_copy

WHERE = "import json, vkit, gateway; print(json.dumps([vkit.__file__, gateway.__file__]))"


@dataclass(frozen=True)
class InstalledKit:
    """The venv's ``vkit`` command and the environment of a shell with only it activated."""

    vkit: Path
    env: dict[str, str]


def installed_kit(work: Path) -> InstalledKit:
    """The wheel built and installed under ``work`` (wheels/, venv/, src/)."""
    work.mkdir(parents=True, exist_ok=True)
    wheels = work / "wheels"
    build = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    must(run([sys.executable, *build, source_copy(work / "src")], cwd=work, timeout=300))
    (wheel,) = wheels.glob("vkit-*.whl")

    venv = work / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    must(run([base_python, "-m", "venv", venv], cwd=work, timeout=120))
    env = clean_env(venv)
    python = venv / "bin" / "python"
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel]
    must(run(install, cwd=work, env=env, timeout=300))
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(must(run([python, "-c", purelib], cwd=work, env=env, timeout=60)).stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = json.loads(must(run([python, "-I", "-c", WHERE], cwd=work, timeout=60)).stdout)
    for module in where:
        assert Path(module).resolve().is_relative_to(site.resolve()), module
    return InstalledKit(venv / "bin" / "vkit", env)
