"""What a built overlay must do on its first day on a real cluster (issue 20): drain as long
as the gateway lets a request run, keep the compile cache, apply the CPU engine's AMX fix,
hold requests through a one-replica restart, and show its dashboard in kube-prometheus-stack's
Grafana. Each checks what ``kubectl kustomize`` builds from the committed overlay."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import TimeoutSettings
from launcher.supervision.amx_site import SITE_DIR as AMX_SITE_DIR
from tests.deploy.gateway_env import gateway_settings
from tests.deploy.test_k8s_manifests import find, flag, vllm_container
from tests.deploy.test_k8s_render import GPU_OVERLAYS, K8S_DIR, OVERLAYS, built
from vkit.render.k8s_monitoring import RULES_FILE

pytestmark = pytest.mark.integration

GATEWAY_TOTAL_S = TimeoutSettings().total
REPO = Path(__file__).resolve().parents[2]
SUPERVISOR = REPO / "vkit" / "render" / "vllm_supervisor.py"
FAKE_ENGINE = REPO / "tests" / "launcher" / "supervision" / "fake_engine.py"
# kube-prometheus-stack's Grafana (chart values, grafana.sidecar): dashboards are searched in
# every namespace, datasources only in Grafana's own, which the README installs as monitoring.
GRAFANA_NAMESPACE = "monitoring"


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "StatefulSet", "vllm")["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def mount_source(objects: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """The volume (or volume claim template) and subPath mounted at ``path`` in vLLM."""
    (mount,) = [m for m in vllm_container(objects)["volumeMounts"] if m["mountPath"] == path]
    sts = find(objects, "StatefulSet", "vllm")
    claims = {c["metadata"]["name"]: c for c in sts["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in pod_spec(objects).get("volumes", [])}
    source = claims.get(mount["name"]) or volumes[mount["name"]]
    return {"source": source, "subPath": mount.get("subPath"), "claim": mount["name"] in claims}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_a_replica_drains_as_long_as_the_gateway_lets_a_request_run(overlay: str) -> None:
    """Scale-down and rollouts SIGTERM a replica that may still stream an answer the gateway
    allows for its whole-request timeout: vLLM must drain that long, and the kubelet wait
    for the preStop sleep, the drain and a margin before SIGKILL."""
    container = vllm_container(built(overlay))
    shutdown = int(flag(container["args"], "--shutdown-timeout") or 0)
    assert shutdown >= GATEWAY_TOTAL_S
    prestop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod_spec(built(overlay))["terminationGracePeriodSeconds"] > prestop + shutdown


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_compile_cache_lives_on_the_replicas_volume(overlay: str) -> None:
    """torch.compile's artifacts (``$VLLM_CACHE_ROOT``) survive a restart and a wake from
    zero: they are on the replica's own persistent claim, not in the container."""
    container = vllm_container(built(overlay))
    root = env_of(container)["VLLM_CACHE_ROOT"]
    source = mount_source(built(overlay), root)
    assert source["claim"], source
    assert source["subPath"], "a directory of its own on the cache claim"


def test_the_cpu_replica_asks_linux_for_amx_state_in_every_python_process() -> None:
    """As ``vkit launch --cpu`` does: PYTHONPATH leads to a directory whose sitecustomize is
    the launcher's own (docs/cpu-engine.md#amx-cpus)."""
    objects = built("cpu-tiny-llama")
    container = vllm_container(objects)
    first = env_of(container)["PYTHONPATH"].split(":")[0]
    source = mount_source(objects, first)["source"]
    configmap = find(objects, "ConfigMap", source["configMap"]["name"])
    expected = (Path(AMX_SITE_DIR) / "sitecustomize.py").read_text()
    assert configmap["data"]["sitecustomize.py"] == expected


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_gateway_holds_requests_while_no_replica_is_ready(overlay: str) -> None:
    """A one-replica StatefulSet restarts its only pod on a rollout: the gateway holds the
    requests that arrive meanwhile (within its hold deadline) instead of answering 503."""
    objects = built(overlay)
    (gateway,) = find(objects, "Deployment", "vkit-gateway")["spec"]["template"]["spec"][
        "containers"
    ]
    hold = gateway_settings({e["name"]: e.get("value", "x") for e in gateway["env"]}).hold
    assert hold.max_wait is not None
    assert hold.max_wait <= GATEWAY_TOTAL_S / 2


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_grafana_of_kube_prometheus_stack_finds_the_dashboards_datasource(overlay: str) -> None:
    """Every panel's datasource is one that Grafana loads: a datasource variable (any
    Prometheus, such as the chart's default one) or a ConfigMap in Grafana's namespace."""
    objects = built(overlay)
    (board,) = [o for o in objects if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    dashboard = json.loads(next(iter(board["data"].values())))
    variables = {
        f"${{{v['name']}}}"
        for v in dashboard["templating"]["list"]
        if v["type"] == "datasource" and v["query"] == "prometheus"
    }
    loaded = set(variables)
    for obj in objects:
        meta = obj["metadata"]
        if meta.get("labels", {}).get("grafana_datasource") == "1" and (
            meta["namespace"] == GRAFANA_NAMESPACE
        ):
            for text in obj["data"].values():
                loaded |= {d["uid"] for d in yaml.safe_load(text)["datasources"]}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in loaded, panel["title"]


def duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_a_starting_replica_pages_only_past_its_start_up_budget(overlay: str) -> None:
    """ReplicaDown needs a replica that answered before; ReplicaNotStarted waits longer than
    the startupProbe lets a replica load, and within the hour ReplicaDown looks back."""
    rules = {
        r["alert"]: r
        for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
        for r in group["rules"]
        if "alert" in r
    }
    probe = vllm_container(built(overlay))["startupProbe"]
    budget = probe["failureThreshold"] * probe["periodSeconds"] + probe.get(
        "initialDelaySeconds", 0
    )
    not_started = duration_s(rules["ReplicaNotStarted"]["for"])
    assert budget < not_started
    (lookback,) = re.findall(r"max_over_time\(up\{[^}]*\}\[(\w+)\]\)", rules["ReplicaDown"]["expr"])
    assert not_started <= duration_s(lookback)


def test_the_readme_makes_prometheus_select_the_dcgm_service_monitor() -> None:
    """kube-prometheus-stack selects ServiceMonitors by its ``release`` label unless told
    otherwise; the GPU operator's DCGM ServiceMonitor has no such label."""
    readme = (K8S_DIR / "README.md").read_text()
    assert "serviceMonitorSelectorNilUsesHelmValues=false" in readme
    assert "nvidia-dcgm-exporter" in readme


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_a_replica_heals_vllms_start_up_memory_errors(overlay: str, tmp_path: Path) -> None:
    """As ``vkit launch`` does (issue 20: healing ran only where `vkit launch` runs): the pod's
    command is the compose supervisor, from a ConfigMap holding the kit's file, over the
    server. Run as built -- the ConfigMap's file, the command's flags, the overlay's args --
    with a stand-in in vLLM's place that refuses a context over 1,024 tokens as vLLM does:
    it is started again at vLLM's estimate."""
    objects = built(overlay)
    container = vllm_container(objects)
    command = container["command"]
    script = Path(command[1])
    source = mount_source(objects, str(script.parent))["source"]
    text = find(objects, "ConfigMap", source["configMap"]["name"])["data"][script.name]
    assert text == SUPERVISOR.read_text()
    server_at = command.index("--") + 1
    assert command[server_at:] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert int(flag(container["args"], "--max-model-len") or 0) > 1024

    (tmp_path / script.name).write_text(text)
    stand_in = [sys.executable, str(FAKE_ENGINE), "too-long"]
    argv = [sys.executable, str(tmp_path / script.name), *command[2:server_at], *stand_in]
    result = subprocess.run(
        [*argv, *container["args"]], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    starts = [line for line in result.stdout.splitlines() if line.startswith("fake engine")]
    assert len(starts) == 2 and starts[-1].endswith("--max-model-len 1024"), result.stdout
    assert "retrying with --max-model-len 1024 (restart 1/2)" in result.stderr
