"""The installed wheel renders a complete bundle into an empty directory outside the checkout.

The kit's wheel in a fresh venv (:mod:`tests.deploy.wheel_kit`): ``vkit render compose --out
EMPTY/compose.yaml`` from that venv must leave a bundle that
:func:`~tests.deploy.bundle_check.bundle_problems` finds complete, and that ``docker-compose
config`` accepts. (``tests/deploy/test_compose_up.py`` runs a wheel-rendered CPU bundle.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.bundle_check import bundle_problems
from tests.deploy.test_compose import docker_compose
from tests.deploy.wheel_kit import installed_kit
from tests.test_packaging import must, run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "render compose --gpu rtx4090 --gpus 0,1 --model llama-3.1-8b --quant awq"


@pytest.mark.system
def test_the_wheel_renders_a_complete_bundle_outside_the_checkout(tmp_path: Path) -> None:
    assert not tmp_path.is_relative_to(ROOT)
    kit = installed_kit(tmp_path)

    bundle = tmp_path / "empty"
    bundle.mkdir()
    argv = [kit.vkit, *EXAMPLE.split(), "--out", bundle / "compose.yaml"]
    must(run(argv, cwd=tmp_path, env=kit.env, timeout=120))
    assert bundle_problems(bundle) == []

    filled = re.sub(
        r"^(\w+)=$", r"\1=http://test.invalid/x", (bundle / ".env").read_text(), flags=re.M
    )
    (bundle / "test.env").write_text(filled)
    config = [*docker_compose(), "--env-file", bundle / "test.env", "-f", bundle / "compose.yaml"]
    checked = run([*config, "config", "-q"], cwd=tmp_path, timeout=60)
    assert checked.returncode == 0, checked.stderr
