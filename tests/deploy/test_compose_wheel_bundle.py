"""The installed wheel renders a complete bundle into an empty directory outside the checkout.

The kit's wheel, built from a copy of the sources pyproject names, is installed with
``--no-deps`` into a fresh venv; its dependencies come from the test's own environment
through a ``.pth`` line naming that site-packages directory (a plain path: the editable
install's own ``.pth`` files there are not processed, so the checkout is not importable).
``vkit render compose --out EMPTY/compose.yaml`` from that venv must leave a bundle that
:func:`~tests.deploy.bundle_check.bundle_problems` finds complete, and that
``docker-compose config`` accepts.
"""

from __future__ import annotations

import json
import re
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.bundle_check import bundle_problems
from tests.deploy.test_compose import docker_compose
from tests.test_packaging import clean_env, must, run, source_copy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "render compose --gpu rtx4090 --gpus 0,1 --model llama-3.1-8b --quant awq"
WHERE = "import json, vkit, gateway; print(json.dumps([vkit.__file__, gateway.__file__]))"


@pytest.mark.system
def test_the_wheel_renders_a_complete_bundle_outside_the_checkout(tmp_path: Path) -> None:
    assert not tmp_path.is_relative_to(ROOT)
    wheels = tmp_path / "wheels"
    build = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    must(run([sys.executable, *build, source_copy(tmp_path / "src")], cwd=tmp_path, timeout=300))
    (wheel,) = wheels.glob("vkit-*.whl")

    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    must(run([base_python, "-m", "venv", venv], cwd=tmp_path, timeout=120))
    env = clean_env(venv)
    python = venv / "bin" / "python"
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel]
    must(run(install, cwd=tmp_path, env=env, timeout=300))
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(
        must(run([python, "-c", purelib], cwd=tmp_path, env=env, timeout=60)).stdout.strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = json.loads(must(run([python, "-I", "-c", WHERE], cwd=tmp_path, timeout=60)).stdout)
    for module in where:
        assert Path(module).resolve().is_relative_to(site.resolve()), module

    bundle = tmp_path / "empty"
    bundle.mkdir()
    argv = [venv / "bin" / "vkit", *EXAMPLE.split(), "--out", bundle / "compose.yaml"]
    must(run(argv, cwd=tmp_path, env=env, timeout=120))
    assert bundle_problems(bundle) == []

    filled = re.sub(
        r"^(\w+)=$", r"\1=http://test.invalid/x", (bundle / ".env").read_text(), flags=re.M
    )
    (bundle / "test.env").write_text(filled)
    config = [*docker_compose(), "--env-file", bundle / "test.env", "-f", bundle / "compose.yaml"]
    checked = run([*config, "config", "-q"], cwd=tmp_path, timeout=60)
    assert checked.returncode == 0, checked.stderr
