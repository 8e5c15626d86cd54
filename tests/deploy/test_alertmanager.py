"""Alertmanager in the compose bundle: rendered, filled from .env, checked by amtool, and
an alert that goes all the way from a rule to a webhook (real Prometheus, real
Alertmanager, a stand-in receiver)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.alerting_stack import AlertingStack, WebhookReceiver
from tests.deploy.bundle_check import image_default
from vkit.cli import main
from vkit.render.alertmanager import (
    ALERTMANAGER_PORT,
    CONFIG_FILE,
    START_SCRIPT_FILE,
    WEBHOOK_URL_PLACEHOLDER,
    build_alertmanager_config,
)

DOCKER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "docker"
EXAMPLE = [
    "render", "compose", "--gpu", "rtx4090", "--gpus", "0,1", "--model", "llama-3.1-8b",
    "--quant", "awq", "--concurrency", "16",
]  # fmt: skip
# Every character a URL may carry that sed's replacement or a single-quoted YAML string
# would otherwise read: & | ' and a backslash.
AWKWARD_URL = "https://hooks.example.com/services/T0/B0?token=a&b=c|d'e\\f"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool is not installed (Debian package: prometheus-alertmanager)")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, check=False
    )  # fmt: skip


def run_start_script(
    directory: Path, url: str | None, *command: str
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"} | ({} if url is None else {"ALERTMANAGER_WEBHOOK_URL": url})
    return subprocess.run(
        ["sh", str(directory / "start.sh"), *command],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )  # fmt: skip


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The example bundle rendered afresh into ``tmp_path``."""
    assert main([*EXAMPLE, "--out", str(tmp_path / "compose.yaml")]) == 0
    return tmp_path


def test_committed_alertmanager_files_are_the_rendered_ones(bundle: Path) -> None:
    for name in (CONFIG_FILE, START_SCRIPT_FILE):
        assert (bundle / name).read_text() == (DOCKER_DIR / name).read_text(), name


def test_prometheus_sends_alerts_to_the_alertmanager_service() -> None:
    compose: dict[str, Any] = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    service = compose["services"]["alertmanager"]
    assert "ports" not in service  # backend only, like Prometheus
    assert image_default(service["image"]).startswith("prom/alertmanager:v")
    assert service["environment"]["ALERTMANAGER_WEBHOOK_URL"].startswith(
        "${ALERTMANAGER_WEBHOOK_URL:?"
    )
    mount = next(v for v in service["volumes"] if v.startswith("./alertmanager:"))
    mounted_at = mount.split(":")[1]
    assert service["entrypoint"] == ["/bin/sh", f"{mounted_at}/start.sh"]
    scrape = yaml.safe_load((DOCKER_DIR / "prometheus" / "prometheus.yml").read_text())
    (manager,) = scrape["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": [f"alertmanager:{ALERTMANAGER_PORT}"]}]
    assert set(service["networks"]) & set(compose["services"]["prometheus"]["networks"])


def test_the_receiver_is_a_webhook_with_the_placeholder_and_resolutions() -> None:
    config = yaml.safe_load((DOCKER_DIR / CONFIG_FILE).read_text())
    (receiver,) = config["receivers"]
    assert config["route"]["receiver"] == receiver["name"]
    assert receiver["webhook_configs"] == [{"url": WEBHOOK_URL_PLACEHOLDER, "send_resolved": True}]


@pytest.mark.integration
def test_docker_compose_refuses_to_start_without_the_webhook_url(tmp_path: Path) -> None:
    compose_cli = shutil.which("docker-compose")
    if compose_cli is None:
        pytest.fail("docker-compose is not installed (Debian package: docker-compose)")
    example = (DOCKER_DIR / ".env.example").read_text()
    filled = re.sub(r"^(\w+)=$", r"\1=test-value", example, flags=re.M)
    results = {}
    for name, env in {
        "with": filled,
        "without": re.sub(r"^ALERTMANAGER_WEBHOOK_URL=.*$", "", filled, flags=re.M),
    }.items():
        (tmp_path / f"{name}.env").write_text(env)
        results[name] = subprocess.run(
            [compose_cli, "--env-file", str(tmp_path / f"{name}.env"),
             "-f", str(DOCKER_DIR / "compose.yaml"), "--project-directory", str(DOCKER_DIR),
             "config", "-q"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert results["with"].returncode == 0, results["with"].stderr
    assert results["without"].returncode != 0
    assert "ALERTMANAGER_WEBHOOK_URL" in results["without"].stderr


@pytest.mark.integration
def test_start_script_fills_in_the_url_and_amtool_accepts_the_result(tmp_path: Path) -> None:
    shutil.copytree(DOCKER_DIR / "alertmanager", tmp_path, dirs_exist_ok=True)
    written = tmp_path / "data" / "alertmanager.yml"
    written.parent.mkdir()
    # The command after the script is what it execs: here `true`, in compose Alertmanager.
    result = run_start_script(tmp_path, AWKWARD_URL, "true", f"--config.file={written}")
    assert result.returncode == 0, result.stderr
    checked = amtool("check-config", str(written))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(written.read_text())
    assert config["receivers"][0]["webhook_configs"][0]["url"] == AWKWARD_URL


@pytest.mark.integration
def test_amtool_refuses_the_template_alertmanager_would_get_unfilled() -> None:
    """The check above can fail: the placeholder is no URL, so an unfilled config never
    starts an Alertmanager that would deliver nowhere."""
    checked = amtool("check-config", str(DOCKER_DIR / CONFIG_FILE))
    assert checked.returncode != 0
    assert "url" in (checked.stdout + checked.stderr).lower()


@pytest.mark.integration
@pytest.mark.parametrize("url", [None, "", "hooks.example.com/x", "ftp://example.com/x"])
def test_start_script_refuses_a_missing_or_non_http_url(tmp_path: Path, url: str | None) -> None:
    shutil.copytree(DOCKER_DIR / "alertmanager", tmp_path, dirs_exist_ok=True)
    written = tmp_path / "alertmanager.out.yml"
    result = run_start_script(tmp_path, url, "true", f"--config.file={written}")
    assert result.returncode == 64
    assert result.stderr.strip() == "start.sh: ALERTMANAGER_WEBHOOK_URL is not an http(s) URL"
    assert not written.exists()


@pytest.mark.integration
def test_start_script_needs_to_know_where_the_config_goes(tmp_path: Path) -> None:
    shutil.copytree(DOCKER_DIR / "alertmanager", tmp_path, dirs_exist_ok=True)
    result = run_start_script(tmp_path, "https://example.com/hook", "true")
    assert result.returncode == 64
    assert "--config.file=" in result.stderr


@pytest.mark.integration
def test_a_firing_rule_reaches_the_webhook(tmp_path: Path) -> None:
    """A replica restarts (a new process start time): the shipped ReplicaRestarted rule
    fires in a real Prometheus, which hands it to a real Alertmanager started by the
    shipped start script, which POSTs it to the webhook named in its environment."""
    with WebhookReceiver() as receiver, AlertingStack(tmp_path, receiver.url) as stack:
        stack.wait_for_scrape("process_start_time_seconds")
        stack.replica.script.start_time = 1_764_580_600.0  # the replica came back: a new process
        notification = receiver.wait_for("ReplicaRestarted", timeout=60)
    assert notification["receiver"] == "webhook"
    assert notification["status"] == "firing"
    (alert,) = notification["alerts"]
    assert alert["labels"] == {
        "alertname": "ReplicaRestarted",
        "instance": stack.replica.address,
        "job": "vllm",
        "severity": "warning",
    }
    assert alert["annotations"]["summary"] == (
        f"vLLM replica {stack.replica.address} restarted 1 time(s) in 15 minutes"
    )


def test_the_test_alertmanager_config_differs_from_the_shipped_one_only_in_timing() -> None:
    shipped = yaml.safe_load((DOCKER_DIR / CONFIG_FILE).read_text())
    quick = build_alertmanager_config(group_wait="1s", group_interval="1s", repeat_interval="1m")
    for key in ("group_wait", "group_interval", "repeat_interval"):
        del shipped["route"][key], quick["route"][key]
    assert quick == shipped
