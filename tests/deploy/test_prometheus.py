"""Prometheus files, checked by promtool: config, rules, and the alerts' unit tests."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

from gateway.metrics import GatewayMetrics
from vkit.render.prometheus import build_cost_rules, build_prometheus_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "monitoring" / "rules" / "vkit.rules.yml"
RULE_TESTS = DEPLOY / "monitoring" / "tests" / "vkit.rules.test.yml"
CHECKLIST_ALERTS = {
    "FleetSaturated",
    "FleetUnderused",
    "VllmQueueGrowing",
    "VllmKvCacheFull",
    "VllmPreempting",
    "ReplicaDown",
    "GatewayErrorRatioHigh",
    "TtftP95AboveTarget",
}
# What must reach a person with no load threshold crossed (issue 11), and the SLOs.
AVAILABILITY_ALERTS = {
    "ReplicaRestarted",
    "ReplicaNotStarted",
    "ReplicaFlapping",
    "DcgmExporterDown",
    "TargetMissing",
    "DcgmExporterMissing",
    "GpuXidError",
    "GpuFramebufferNearlyFull",
    "TtftSloBurning",
    "RequestLatencySloBurning",
}
HEALTHY_TEST = "healthy fleet -- no alert at all, even after a day"
BUCKET_MATCHER = re.compile(r'([\w:]+)_bucket\{[^}]*\ble(=~?)"((?:\\.|[^"\\])*)"')
# vLLM's bucket tuples (vllm/v1/metrics/buckets.py) for the histograms the rules read.
VLLM_BUCKETS = {
    "vllm:time_to_first_token_seconds": "TIME_TO_FIRST_TOKEN_BUCKETS",
    "vllm:e2e_request_latency_seconds": "REQUEST_LATENCY_BUCKETS",
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
    assert alert_names(yaml.safe_load(RULES.read_text())) >= AVAILABILITY_ALERTS


def test_every_alert_is_checked_quiet_on_the_healthy_fleet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    (healthy,) = [test for test in tests if test["name"] == HEALTHY_TEST]
    quiet = {case["alertname"] for case in healthy["alert_rule_test"] if case["exp_alerts"] == []}
    alerts = alert_names(yaml.safe_load(RULES.read_text()))
    # FleetUnderused is checked quiet here; its firing needs a day of idle GPUs.
    assert alerts <= quiet, alerts - quiet


def exported_bucket_bounds() -> dict[str, set[str]]:
    """``le`` values as the exporters write them: the gateway's (its real registry) and
    vLLM's (the bucket tuples of the installed vLLM, read without importing vLLM)."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.answered("k", "m", 200, 0.1)
    metrics.exchange_done(model="m", time_to_first_byte=0.1, overhead=0.001)
    bounds: dict[str, set[str]] = {}
    for line in generate_latest(registry).decode().splitlines():
        if match := re.match(r'([\w:]+)_bucket\{.*\ble="([^"]+)"', line):
            bounds.setdefault(match.group(1), set()).add(match.group(2))
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "v1" / "metrics" / "buckets.py").read_text()
    tuples: dict[str, Any] = {}
    for node in ast.parse(source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id in VLLM_BUCKETS.values():
            assert isinstance(node, ast.AnnAssign) and node.value is not None
            tuples[target.id] = ast.literal_eval(node.value)
    for metric, name in VLLM_BUCKETS.items():
        bounds[metric] = {floatToGoString(b) for b in tuples[name]} | {"+Inf"}
    return bounds


def prometheus3_le(le: str) -> str:
    """How Prometheus 3 stores a classic bucket's ``le`` (60.0 -> 60)."""
    text = repr(float(le)) if le != "+Inf" else le
    return text.removesuffix(".0")


@pytest.mark.system
def test_slo_thresholds_are_bucket_bounds_the_exporters_write() -> None:
    """An ``le`` the exporter never writes selects nothing, and the SLO alert never fires;
    the gateway writes le="60.0", which Prometheus 3 stores as le="60": match both."""
    exprs = [
        rule["expr"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    ]
    matchers = [m.groups() for expr in exprs for m in BUCKET_MATCHER.finditer(expr)]
    assert {metric for metric, _, _ in matchers} == {
        "vllm:time_to_first_token_seconds",
        "vkit_gateway_request_duration_seconds",
    }
    bounds = exported_bucket_bounds()
    for metric, op, quoted in matchers:
        value = re.sub(r"\\(.)", r"\1", quoted)
        for written in (bounds[metric], {prometheus3_le(le) for le in bounds[metric]}):
            if op == "=":
                hits = [le for le in written if le == value]
            else:
                hits = [le for le in written if re.fullmatch(value, le)]
            assert len(hits) == 1, (metric, op, value, sorted(written))


@pytest.mark.system
def test_the_bucket_check_can_fail() -> None:
    """A 2 s TTFT target is no bucket of vLLM's; the gateway's 60 s is only "60.0" as written."""
    bounds = exported_bucket_bounds()
    assert "2.5" in bounds["vllm:time_to_first_token_seconds"]
    assert "2" not in bounds["vllm:time_to_first_token_seconds"]
    assert "60.0" in bounds["vkit_gateway_request_duration_seconds"]
    assert "60" not in bounds["vkit_gateway_request_duration_seconds"]
    assert prometheus3_le("60.0") == "60" and prometheus3_le("2.5") == "2.5"


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
    assert "alerting" not in config  # no Alertmanager given: alerts stay in Prometheus


def test_alerts_go_to_the_alertmanager_given() -> None:
    config = build_prometheus_config(
        ["vllm-0:8000"], "gateway:9180", None, alertmanager_target="alertmanager:9093"
    )
    assert config["alerting"] == {
        "alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]
    }
    assert config["rule_files"] == ["cost.rules.yml", "rules/*.yml"]


def test_cost_rules_label_each_gpu_with_its_price() -> None:
    rules = build_cost_rules(["0", "3"], "l40s", 0.88)["groups"][0]["rules"]
    assert [rule["labels"]["gpu"] for rule in rules] == ["0", "3"]
    assert {rule["expr"] for rule in rules} == {"vector(0.88)"}


@pytest.mark.integration
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_alerts_fire_on_unhealthy_series_and_stay_quiet_on_healthy_ones() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.integration
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """Guard for the test above: a threshold moved out of reach makes promtool fail."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(
        "sum(avg_over_time(vllm:num_requests_waiting[5m])) >= 1",
        "sum(avg_over_time(vllm:num_requests_waiting[5m])) >= 100",
    )
    (tmp_path / "rules" / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "FleetSaturated" in result.stdout + result.stderr


@pytest.mark.integration
def test_promtool_accepts_the_committed_config_with_its_rule_files(tmp_path: Path) -> None:
    """Lay the files out as the compose file mounts them in /etc/prometheus."""
    docker = DEPLOY / "docker" / "prometheus"
    shutil.copy(docker / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(docker / "cost.rules.yml", tmp_path / "cost.rules.yml")
    shutil.copytree(RULES.parent, tmp_path / "rules")
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout + result.stderr
