"""A bundle rendered anywhere is complete: what its compose file names is inside it.

``vkit render compose --out DIR/compose.yaml`` into an empty directory (not
``deploy/docker/``): every bind-mount source and build context is in DIR, of the right kind,
``.env.example`` lists every variable with a comment, the images come from ``.env`` with the
pinned ones as defaults, and a ``.env`` the user edited is never overwritten.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.bundle_check import IMAGE_REFERENCE, bundle_problems
from tests.deploy.test_compose import docker_compose
from vkit.cli import main
from vkit.deployment import images

EXAMPLE = [
    "render", "compose", "--gpu", "rtx4090", "--gpus", "0,1", "--model", "llama-3.1-8b",
    "--quant", "awq", "--concurrency", "16",
]  # fmt: skip


def render(out: Path, *extra: str) -> Path:
    assert main([*EXAMPLE, *extra, "--out", str(out / "compose.yaml")]) == 0
    return out


def test_a_bundle_rendered_into_an_empty_directory_is_complete(tmp_path: Path) -> None:
    assert bundle_problems(render(tmp_path / "bundle")) == []


def test_an_aware_bundle_is_complete_too(tmp_path: Path) -> None:
    assert bundle_problems(render(tmp_path / "bundle", "--routing", "aware")) == []


def test_the_check_can_fail(tmp_path: Path) -> None:
    bundle = render(tmp_path / "bundle")
    compose = bundle / "compose.yaml"
    text = compose.read_text()
    for problem_text in (
        text.replace("./nginx/vkit.conf:", "./nginx:", 1),  # a directory where a file goes
        text.replace("./prometheus/rules:", "../monitoring/rules:", 1),
        text + "x-extra: ${VKIT_UNLISTED:-1}\n",
    ):
        compose.write_text(problem_text)
        assert bundle_problems(bundle) != [], problem_text
    compose.write_text(text)
    (bundle / "vllm_supervisor.py").unlink()
    assert bundle_problems(bundle) == [
        "vllm-0: ./vllm_supervisor.py is not in the bundle",
        "vllm-1: ./vllm_supervisor.py is not in the bundle",
    ]


def test_every_image_comes_from_env_with_the_pinned_one_as_default(tmp_path: Path) -> None:
    bundle = render(tmp_path / "bundle")
    compose: dict[str, Any] = yaml.safe_load((bundle / "compose.yaml").read_text())
    pinned = {
        images.VLLM_IMAGE, images.NGINX_IMAGE, images.COMPOSE_GATEWAY_IMAGE, images.REDIS_IMAGE,
        images.PROMETHEUS_IMAGE, images.GRAFANA_IMAGE, images.ALERTMANAGER_IMAGE,
        images.DCGM_IMAGE,
    }  # fmt: skip
    seen = {}
    for name, service in compose["services"].items():
        match = IMAGE_REFERENCE.fullmatch(service["image"])
        assert match, f"{name}: {service['image']}"
        seen[match.group(1)] = match.group(2)
    assert set(seen.values()) == pinned
    example = (bundle / ".env.example").read_text()
    for variable, default in seen.items():
        assert f"\n{variable}={default}\n" in example, variable


def test_a_generated_env_is_never_overwritten(tmp_path: Path) -> None:
    bundle = render(tmp_path / "bundle")
    env = bundle / ".env"
    assert env.stat().st_mode & 0o777 == 0o600  # it holds secrets
    values = dict(re.findall(r"^(\w+)=(.*)$", env.read_text(), re.M))
    assert values["VKIT_KEYS_GID"] == str(os.getgid())
    assert values["VKIT_KEYS_DIR"] == "./keys"
    assert len(values["VLLM_API_KEY"]) >= 32 and len(values["GRAFANA_ADMIN_PASSWORD"]) >= 16
    env.write_text("# mine\nVLLM_MODEL=acme/model\n")
    render(bundle)
    assert env.read_text() == "# mine\nVLLM_MODEL=acme/model\n"


def test_the_committed_example_has_no_env_and_ignores_one(tmp_path: Path) -> None:
    docker = Path(__file__).resolve().parents[2] / "deploy" / "docker"
    ignored = (docker / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "keys/" in ignored


def test_a_re_render_leaves_nothing_of_an_older_kit_in_the_build_context(tmp_path: Path) -> None:
    bundle = render(tmp_path / "bundle")
    sources = bundle / "build" / "gateway" / "src"
    before = sorted(p.relative_to(sources) for p in sources.rglob("*"))
    (sources / "vkit" / "removed_module.py").write_text("raise SystemExit('stale')\n")
    render(bundle)
    assert sorted(p.relative_to(sources) for p in sources.rglob("*")) == before
    assert sorted(p.name for p in sources.parent.iterdir()) == [
        "Dockerfile", "gateway-requirements.txt", "pyproject.toml", "src",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["compose.yaml", ".env.example"])
def test_no_file_is_left_half_written(tmp_path: Path, name: str) -> None:
    bundle = render(tmp_path / "bundle")
    leftovers = [p for p in bundle.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert (bundle / name).read_text().endswith("\n")


@pytest.mark.integration
def test_the_first_env_leaves_only_the_webhook_to_fill_in(tmp_path: Path) -> None:
    """``docker-compose`` reads the generated ``.env`` (its default place, beside the
    compose file): it asks for the webhook URL only, and accepts the bundle once it is set."""
    bundle = render(tmp_path / "bundle")
    argv = [*docker_compose(), "--project-directory", str(bundle), "config", "-q"]

    def config() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=bundle, capture_output=True, text=True, timeout=60, check=False
        )

    first = config()
    assert first.returncode != 0
    assert "ALERTMANAGER_WEBHOOK_URL" in first.stderr, first.stderr
    env = bundle / ".env"
    env.write_text(
        env.read_text().replace(
            "ALERTMANAGER_WEBHOOK_URL=\n", "ALERTMANAGER_WEBHOOK_URL=http://hooks.invalid/x\n"
        )
    )
    second = config()
    assert second.returncode == 0, second.stderr
