"""Prometheus files, checked by promtool: config, rules, and the alerts' unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vkit.render.prometheus import build_cost_rules, build_prometheus_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "monitoring" / "rules" / "vkit.rules.yml"
RULE_TESTS = DEPLOY / "monitoring" / "tests" / "vkit.rules.test.yml"
CHECKLIST_ALERTS = {
    "GpuUtilizationHigh",
    "GpuUtilizationLow",
    "VllmQueueGrowing",
    "VllmKvCacheFull",
    "VllmPreempting",
    "ReplicaDown",
    "GatewayErrorRatioHigh",
    "TtftP95AboveTarget",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (Debian package: prometheus)")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def alert_names(rules: dict[str, object]) -> set[str]:
    groups = rules["groups"]
    assert isinstance(groups, list)
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_the_checklist_is_encoded_as_alerts() -> None:
    assert alert_names(yaml.safe_load(RULES.read_text())) >= CHECKLIST_ALERTS


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alert_names(yaml.safe_load(RULES.read_text())) <= fired


def test_scrape_config_has_a_job_per_kind_of_target() -> None:
    config = build_prometheus_config(["vllm-0:8000", "vllm-1:8000"], "gateway:8080", "dcgm:9400")
    jobs = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert jobs["vllm"] == ["vllm-0:8000", "vllm-1:8000"]
    assert jobs["vkit-gateway"] == ["gateway:8080"]
    assert jobs["dcgm"] == ["dcgm:9400"]


def test_cost_rules_label_each_gpu_with_its_price() -> None:
    rules = build_cost_rules(["0", "3"], "l40s", 0.88)["groups"][0]["rules"]
    assert [rule["labels"]["gpu"] for rule in rules] == ["0", "3"]
    assert {rule["expr"] for rule in rules} == {"vector(0.88)"}


@pytest.mark.services
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.services
def test_alerts_fire_on_unhealthy_series_and_stay_quiet_on_healthy_ones() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.services
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """Guard for the test above: a threshold moved out of reach makes promtool fail."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(
        "avg(DCGM_FI_DEV_GPU_UTIL) > 80", "avg(DCGM_FI_DEV_GPU_UTIL) > 99"
    )
    (tmp_path / "rules" / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "GpuUtilizationHigh" in result.stdout + result.stderr


@pytest.mark.services
def test_promtool_accepts_the_committed_config_with_its_rule_files(tmp_path: Path) -> None:
    """Lay the files out as the compose file mounts them in /etc/prometheus."""
    docker = DEPLOY / "docker" / "prometheus"
    shutil.copy(docker / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(docker / "cost.rules.yml", tmp_path / "cost.rules.yml")
    shutil.copytree(RULES.parent, tmp_path / "rules")
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout + result.stderr
