"""What the built overlays promise: drain arithmetic, probes, resources, pinned images, no
secrets, the fit solver's flags, GPUs, network isolation, and gateway settings that load."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.metrics import METRIC_NAMES
from launcher.sizing.capacity import UsageProfile, gpu_throughput
from launcher.sizing.capacity.usage import context_tokens
from launcher.sizing.fit import FitRequest, plan_fit
from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import load_model
from tests.deploy.gateway_env import gateway_settings, unknown_gateway_variables
from tests.deploy.test_k8s_render import GPU_OVERLAYS, OVERLAYS, built
from vkit.commands.render_k8s import read_sources
from vkit.render.k8s_bundle import render_k8s_bundle
from vkit.render.k8s_plan import K8sArgs, plan_k8s

pytestmark = pytest.mark.integration

WORKLOADS = {"Deployment", "StatefulSet"}
SECRET_NAMES = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)$", re.IGNORECASE)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], bool]]:
    """(workload name, container, is an init container) of every workload."""
    found = []
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            pod = obj["spec"]["template"]["spec"]
            found += [(obj["metadata"]["name"], c, False) for c in pod["containers"]]
            found += [(obj["metadata"]["name"], c, True) for c in pod.get("initContainers", [])]
    return found


def vllm_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    sts = find(objects, "StatefulSet", "vllm")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return container


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_drain_waits_for_prestop_and_vllms_shutdown_timeout(overlay: str) -> None:
    sts = find(built(overlay), "StatefulSet", "vllm")
    container = vllm_container(built(overlay))
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    shutdown = int(flag(container["args"], "--shutdown-timeout") or 0)
    assert shutdown > 0
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(prestop[1]) + shutdown


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_container_has_resources_probes_and_a_pinned_image(overlay: str) -> None:
    for workload, container, init in containers(built(overlay)):
        where = f"{workload}/{container['name']}"
        image = container["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*", image), where
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), where
        assert "memory" in resources["limits"], where
        if not init:
            assert {"readinessProbe", "livenessProbe"} <= set(container), where


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_no_secret_in_any_manifest(overlay: str) -> None:
    objects = built(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"]
    for workload, container, _ in containers(objects):
        for env in container.get("env", []):
            if SECRET_NAMES.search(env["name"]):
                assert "value" not in env, f"{workload}: {env['name']} is a literal"
                assert "secretKeyRef" in env["valueFrom"], f"{workload}: {env['name']}"
        assert not any("--api-key" in arg for arg in container.get("args", [])), workload


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_replicas_get_gpus_the_fit_flags_and_a_model_serving_readiness(overlay: str) -> None:
    args = K8sArgs.model_validate(_arguments(OVERLAYS[overlay]))
    spec, plan, _ = plan_k8s(args)
    container = vllm_container(built(overlay))
    argv = container["args"]
    assert flag(argv, "--max-model-len") == str(plan.max_model_len)
    assert flag(argv, "--max-num-seqs") == str(plan.max_num_seqs)
    assert flag(argv, "--served-model-name") == spec.model
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == str(plan.tensor_parallel)
    env = {e["name"]: e for e in container["env"]}
    assert env["CUDA_DEVICE_ORDER"]["value"] == "PCI_BUS_ID"
    readiness = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "/v1/models" in readiness and repr(spec.model) in readiness
    liveness = container["livenessProbe"]["exec"]["command"]  # /health and progress
    assert "http://127.0.0.1:8000/health" in liveness and "--stall-after" in liveness
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_tensor_parallel_gets_its_gpus_and_shared_memory() -> None:
    args = K8sArgs(gpu="h100-sxm", model="llama-3.1-70b", quant="fp8", tp=2, scale_target=16)
    spec, plan, price = plan_k8s(args)
    bundle = render_k8s_bundle(spec, plan, read_sources(), price_per_hour=price, command="t")
    container = vllm_container(bundle.objects)
    assert flag(container["args"], "--tensor-parallel-size") == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    pod = find(bundle.objects, "StatefulSet", "vllm")["spec"]["template"]["spec"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    rule = find(bundle.objects, "PrometheusRule", "vkit-gpu-prices")
    assert price is not None
    assert rule["spec"]["groups"][0]["rules"][0]["expr"].endswith(f"+ {2 * price:g}")
    assert spec.overlay_name == "h100-sxm-llama-3.1-70b-fp8-tp2"


@pytest.mark.parametrize("overlay", [name for name in GPU_OVERLAYS if not name.endswith("-hpa")])
def test_keda_targets_are_the_capacity_planners_per_gpu_concurrency(overlay: str) -> None:
    args = K8sArgs.model_validate(_arguments(OVERLAYS[overlay]))
    usage = UsageProfile(daily_users=1)
    users = gpu_throughput(
        get_gpu(args.gpu), load_model(args.model), args.quant,
        target_tok_s=usage.user_tok_s, context_tokens=context_tokens(usage),
    ).users  # fmt: skip
    scaled = find(built(overlay), "ScaledObject", "vllm")["spec"]
    thresholds = {t["name"]: int(t["metadata"]["threshold"]) for t in scaled["triggers"]}
    assert thresholds["running"] == users > 0
    assert 1 <= thresholds["waiting"] < users
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "vllm",
    }
    assert scaled["minReplicaCount"] == (0 if overlay.endswith("-zero") else 1)
    assert scaled["maxReplicaCount"] >= 2 and scaled["cooldownPeriod"] > 0
    # The fit solver sized the replica for the concurrency it is scaled at.
    plan = plan_fit(FitRequest(quant=args.quant, concurrency=users), get_gpu(args.gpu),
                    load_model(args.model))  # fmt: skip
    assert plan.max_num_seqs >= users


def test_hpa_targets_match_keda() -> None:
    keda = find(built("rtx4090-llama-3.1-8b-awq"), "ScaledObject", "vllm")["spec"]["triggers"]
    hpa = find(built("rtx4090-llama-3.1-8b-awq-hpa"), "HorizontalPodAutoscaler", "vllm")["spec"]
    targets = [int(m["pods"]["target"]["averageValue"]) for m in hpa["metrics"]]
    assert targets == [int(t["metadata"]["threshold"]) for t in keda]
    assert hpa["minReplicas"] >= 1


def test_scale_to_zero_wakes_on_the_gateways_held_requests_and_holds_them() -> None:
    objects = built("rtx4090-llama-3.1-8b-awq-zero")
    triggers = find(objects, "ScaledObject", "vllm")["spec"]["triggers"]
    (wake,) = [t for t in triggers if "vkit_gateway_" in t["metadata"]["query"]]
    assert wake["metadata"]["activationThreshold"] == "0"
    metric = wake["metadata"]["query"].split("(")[1].split("{")[0]
    assert metric == "vkit_gateway_held_requests" and metric in METRIC_NAMES
    (container,) = find(objects, "Deployment", "vkit-gateway")["spec"]["template"]["spec"][
        "containers"
    ]
    settings = gateway_settings({e["name"]: e.get("value", "x") for e in container["env"]})
    assert settings.hold.max_wait is not None
    assert 0 < settings.hold.max_wait <= settings.timeouts.total / 2
    assert settings.hold.max_queued >= int(wake["metadata"]["threshold"])


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_only_the_gateway_and_prometheus_reach_the_vllm_pods(overlay: str) -> None:
    objects = built(overlay)
    policy = find(objects, "NetworkPolicy", "vllm-ingress")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "vllm"}
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    sources = [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
    ]
    assert sources == ["vkit-gateway", "prometheus"]
    headless = find(objects, "Service", "vllm-pods")["spec"]
    assert headless["clusterIP"] == "None"
    assert find(objects, "StatefulSet", "vllm")["spec"]["serviceName"] == "vllm-pods"
    assert find(objects, "PodDisruptionBudget", "vllm")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_gateway_settings_load_and_the_keys_come_from_a_secret_directory(overlay: str) -> None:
    objects = built(overlay)
    gateway = find(objects, "Deployment", "vkit-gateway")
    assert gateway["spec"]["replicas"] >= 2
    hpa = find(objects, "HorizontalPodAutoscaler", "vkit-gateway")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["metrics"][0]["resource"]["name"] == "cpu"
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value", "${secret}") for e in container["env"]}
    assert unknown_gateway_variables(env) == []
    settings = gateway_settings(env)
    assert settings.keys_file is not None and settings.redis_url is not None
    (mount,) = container["volumeMounts"]
    assert "subPath" not in mount  # a subPath mount never sees the Secret's updates
    assert settings.keys_file.parent.as_posix() == mount["mountPath"]
    (volume,) = pod["volumes"]
    assert volume["secret"]["secretName"] == "vkit-gateway-keys"
    served = vllm_container(objects)["args"]
    assert settings.health.expected_models == [flag(served, "--served-model-name")]
    # Upstreams: every ready pod, from the headless Service (what an aware router needs).
    assert settings.discovery.dns_name == "vllm-pods.vkit.svc"
    assert (
        settings.discovery.dns_port
        == find(objects, "Service", "vllm-pods")["spec"]["ports"][0]["port"]
    )
    # Drain: the gateway finishes open responses for up to its whole-request timeout.
    prestop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > prestop + settings.timeouts.total


def _arguments(argv: list[str]) -> dict[str, object]:
    """``--gpu rtx4090 --no-monitoring`` -> ``{"gpu": "rtx4090", "no_monitoring": True}``."""
    found: dict[str, object] = {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else True
            found[token[2:].replace("-", "_")] = value
    return found
