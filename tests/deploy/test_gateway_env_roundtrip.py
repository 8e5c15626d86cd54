"""Every rendered gateway environment loads back into the settings it was rendered from.

Each target builds a :class:`~gateway.settings.GatewaySettings` value and writes it with
:func:`gateway.settings_env.settings_env`; here the written variables are read back by the
gateway's own loader and compared with that value. (install.sh's installed files are checked
in ``test_systemd.py``, which stages a real install.)

References in the files are handled explicitly: compose's ``${VLLM_API_KEY:?...}`` and
``${VLLM_MODEL:?...}`` are kept literally on both sides (compose fills them in at ``up``; the
settings hold the reference as the value); Kubernetes' vLLM key is a ``secretKeyRef``, not a
value, checked by name and left out of the comparison.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings, load_settings
from gateway.settings_env import settings_env, settings_from_values
from launcher.sizing.fit import FitRequest, plan_fit
from launcher.sizing.gpu_sets import split_gpu_sets
from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import load_model
from launcher.supervision.launch_spec import LaunchSettings
from tests.deploy.test_k8s_render import OVERLAYS
from vkit.render.compose import API_KEY_VAR, ComposeSpec, build_compose, compose_deployment
from vkit.render.k8s_bundle import gateway_settings as k8s_gateway_settings
from vkit.render.k8s_bundle import strategic_merge
from vkit.render.k8s_plan import K8sArgs, plan_k8s
from vkit.render.k8s_spec import API_KEY_SECRET
from vkit.render.k8s_vllm import vllm_startup_s
from vkit.render.systemd import (
    GATEWAY_HOST_ENV,
    GATEWAY_MODEL_ENV,
    GATEWAY_ROUTING_ENV,
    ModelTokenizer,
    host_deployment,
    systemd_host_files,
)
from vkit.stack.stack_plan import StackLayout, StackPorts, gateway_spec, stack_gateway_settings
from vkit.stack.up_settings import UpSettings

REPO = Path(__file__).resolve().parents[2]
AWQ_16 = FitRequest(quant="awq", concurrency=16)  # the committed compose file's fit
REFERENCE = re.compile(r"\$\{(\w+)[^}]*\}")


def loads_back(env: dict[str, str], expected: GatewaySettings) -> None:
    assert env, "no gateway variables rendered"
    loaded = load_settings(environ=env)
    assert loaded.model_dump() == expected.model_dump()


def test_settings_env_writes_only_what_was_given() -> None:
    settings = settings_from_values({"timeouts": {"total": 600}, "allow_anonymous": True})
    assert settings_env(settings) == {
        "VKIT_GATEWAY_ALLOW_ANONYMOUS": "true",
        "VKIT_GATEWAY_TIMEOUTS__TOTAL": "600",
    }
    loads_back(settings_env(settings), settings)


@pytest.mark.integration  # a fresh interpreter, so no test environment leaks in
def test_settings_from_values_reads_no_environment() -> None:
    """A render never depends on the shell's VKIT_GATEWAY_* variables."""
    code = (
        "from gateway.settings_env import settings_env, settings_from_values; "
        "print(settings_env(settings_from_values({'routing': 'aware'})))"
    )
    env = {**os.environ, "VKIT_GATEWAY_PORT": "1234", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "{'VKIT_GATEWAY_ROUTING': 'aware'}"


@pytest.mark.parametrize("routing", ["round_robin", "aware"])
def test_compose_gateway_environment_loads_back(routing: str) -> None:
    spec = ComposeSpec.model_validate(
        {"gpu": "rtx4090", "gpu_ids": ["0", "1"], "model": "llama-3.1-8b", "routing": routing}
    )
    plan = plan_fit(
        FitRequest(quant="awq", concurrency=16), get_gpu("rtx4090"), load_model(spec.model)
    )
    env = build_compose(spec, plan)["services"]["gateway"]["environment"]
    references = {name for value in env.values() for name in REFERENCE.findall(value)}
    assert references == {"VLLM_API_KEY", "VLLM_MODEL"}  # kept literally on both sides
    assert env["VKIT_GATEWAY_UPSTREAM_API_KEY"] == API_KEY_VAR
    loads_back(env, compose_deployment(spec, plan).gateway)


def test_committed_compose_file_loads_back() -> None:
    """deploy/docker/compose.yaml (its header's render command)."""
    compose = yaml.safe_load((REPO / "deploy/docker/compose.yaml").read_text())
    spec = ComposeSpec(gpu="rtx4090", gpu_ids=["0", "1"], model="llama-3.1-8b")
    plan = plan_fit(
        FitRequest(quant="awq", concurrency=16), get_gpu("rtx4090"), load_model(spec.model)
    )
    loads_back(
        compose["services"]["gateway"]["environment"], compose_deployment(spec, plan).gateway
    )


def k8s_args(argv: list[str]) -> K8sArgs:
    fields: dict[str, Any] = {}
    words = iter(argv)
    for word in words:
        name = word.removeprefix("--").replace("-", "_")
        fields[name] = True if name == "no_monitoring" else next(words)
    return K8sArgs.model_validate(fields)


def container_env(obj: dict[str, Any]) -> list[dict[str, Any]]:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return list(container["env"])


def plain_env(entries: list[dict[str, Any]]) -> dict[str, str]:
    """The values; the one Secret reference is the vLLM key (checked, then left out)."""
    refs = [entry for entry in entries if "valueFrom" in entry]
    assert refs == [
        {
            "name": "VKIT_GATEWAY_UPSTREAM_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": API_KEY_SECRET, "key": "VLLM_API_KEY"}},
        }
    ]
    return {entry["name"]: entry["value"] for entry in entries if "value" in entry}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_k8s_base_and_overlay_gateway_env_load_back(overlay: str) -> None:
    """The base's env (vkit.render.k8s_manifests) with the overlay's patch
    (vkit.render.k8s_bundle) merged as kustomize merges it, from the committed files."""
    spec, plan, _ = plan_k8s(k8s_args(OVERLAYS[overlay]))
    docs = list(yaml.safe_load_all((REPO / "deploy/k8s/base/gateway.yaml").read_text()))
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    patch = yaml.safe_load((REPO / f"deploy/k8s/overlays/{overlay}/gateway-patch.yaml").read_text())
    merged = strategic_merge(deployment, patch)
    expected = k8s_gateway_settings(spec, vllm_startup_s(spec, plan))
    loads_back(plain_env(container_env(merged)), expected)


@pytest.mark.parametrize("routing", ["round_robin", "aware"])
def test_systemd_env_files_load_back(routing: Any) -> None:
    """In the gateway unit's EnvironmentFile= order; values unescaped as systemd does."""
    tokenizer = ModelTokenizer("llama-3.1-70b", "org/model", PurePosixPath("/var/lib/hf/hub"))
    deployment = host_deployment(
        LaunchSettings(model="org/model", tensor_parallel=2),
        None,
        split_gpu_sets(["0", "1", "2", "3"], tensor_parallel=2),
        base_port=8001,
        listen="127.0.0.1:8000",
        tokenizer=tokenizer,
        routing=routing,
    )
    files = systemd_host_files(deployment, listen="127.0.0.1:8000")
    env: dict[str, str] = {}
    for path in (GATEWAY_MODEL_ENV, GATEWAY_ROUTING_ENV, GATEWAY_HOST_ENV):
        for name, value in re.findall(r"^(\w+)=(.*)$", files[path], re.M):
            env[name] = value.replace("\\\\", "\\")
    loads_back(env, deployment.gateway)


@pytest.mark.parametrize(
    "fields", [{}, {"replicas": 2}, {"routing": "aware"}, {"redis": True}], ids=str
)
def test_vkit_up_gateway_env_loads_back(fields: dict[str, Any]) -> None:
    settings = UpSettings(**fields)
    layout = StackLayout(Path("/run/vkit"))
    replicas = tuple(8101 + i for i in range(settings.replicas))
    ports = StackPorts(
        gateway=8000,
        nginx=8100,
        replicas=replicas,
        redis=6390 if settings.redis else None,
        gateway_admin=9190,
    )
    env = dict(gateway_spec(settings, layout, ports, "python").env)
    assert env.pop("PYTHONUNBUFFERED") == "1"
    loads_back(env, stack_gateway_settings(settings, layout, ports))
