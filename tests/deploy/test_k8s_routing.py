"""Routing on Kubernetes: the gateway discovers every vLLM pod through the headless Service
and routes over them by load and prefix (``aware``, every committed overlay), or
round-robin (``--routing round_robin``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from tests.deploy.gateway_env import gateway_settings, unknown_gateway_variables
from tests.deploy.test_k8s_manifests import find
from tests.deploy.test_k8s_render import OVERLAYS, built, render_stdout

pytestmark = pytest.mark.integration


def gateway_of(objects: list[dict[str, Any]]) -> GatewaySettings:
    deployment = find(objects, "Deployment", "vkit-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "x") for e in container["env"]}
    assert unknown_gateway_variables(env) == []
    return gateway_settings(env)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_overlay_routes_aware_over_the_headless_services_pods(overlay: str) -> None:
    objects = built(overlay)
    settings = gateway_of(objects)
    assert settings.routing == "aware"
    # 2+ gateways, each with its own table, would place a new tenant each its own way (one
    # in three, simulated): on Kubernetes the ring alone decides, the same in every gateway.
    assert settings.router.key_table_size == 0
    assert find(objects, "Deployment", "vkit-gateway")["spec"]["replicas"] >= 2
    headless = find(objects, "Service", "vllm-pods")["spec"]
    assert headless["clusterIP"] == "None"
    sts = find(objects, "StatefulSet", "vllm")
    assert headless["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert settings.discovery.dns_name == "vllm-pods.vkit.svc"
    assert settings.discovery.dns_port == 8000
    assert [p["port"] for p in headless["ports"]] == [settings.discovery.dns_port]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_gateway_may_reach_each_pods_api_and_metrics_port(overlay: str) -> None:
    """The aware router sends requests and scrapes /metrics on the pods' own port."""
    objects = built(overlay)
    port = gateway_of(objects).discovery.dns_port
    rules = find(objects, "NetworkPolicy", "vllm-ingress")["spec"]["ingress"]
    gateway = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vkit-gateway"}}}
    allowed = [r for r in rules if gateway in r["from"]]
    assert allowed and all({"protocol": "TCP", "port": port} in r["ports"] for r in allowed)


def test_round_robin_is_an_overlay_of_its_own(tmp_path: Path) -> None:
    args = ["--gpu", "rtx4090", "--model", "llama-3.1-8b", "--quant", "awq"]
    args += ["--routing", "round_robin"]
    objects = list(yaml.safe_load_all(render_stdout(args)))
    settings = gateway_of(objects)
    assert settings.routing == "round_robin"
    assert settings.discovery.dns_name == "vllm-pods.vkit.svc"  # still every pod, in turn
    render_stdout([*args, "--out", str(tmp_path)])
    overlay = tmp_path / "overlays" / "rtx4090-llama-3.1-8b-awq-round-robin"
    header = (overlay / "kustomization.yaml").read_text().splitlines()[0]
    assert "--routing round_robin" in header
