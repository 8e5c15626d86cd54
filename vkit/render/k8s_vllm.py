"""The vLLM replicas on Kubernetes: a StatefulSet, split into a base and a fit-made patch.

    >>> base = vllm_statefulset_base(NAMESPACE)          # probes, drain, volumes, the key
    >>> patch = vllm_statefulset_patch(spec, plan)      # the fit solver's flags, GPUs, sizes

A StatefulSet, not a Deployment: each replica keeps its own Hugging Face cache volume
(``volumeClaimTemplates``) across restarts and scale-downs, so a replica that comes back does
not download the model again; and its ``serviceName`` is the headless Service that gives the
gateway's aware router one DNS record per pod. Pods start in parallel (``Parallel``).
The same claim keeps vLLM's cache (``VLLM_CACHE_ROOT``: torch.compile's artifacts) in a
directory of its own, so a restart or a wake from zero skips the compilation
(docs/kubernetes.md#compile-cache).

The container's command is the compose replicas' supervisor (``vllm_supervisor.py``, from a
ConfigMap) running the server: it reads vLLM's start-up memory errors and starts it again
with the corrected flag, as ``vkit launch`` does (docs/memory.md#refusal-messages); the
kubelet's probes, not the supervisor, judge health.

CPU replicas run vLLM's CPU image with the launcher's AMX fix: ``PYTHONPATH`` leads to a
ConfigMap holding :mod:`launcher.supervision.amx_site`'s ``sitecustomize``, as
``vkit launch --cpu`` sets it (docs/cpu-engine.md#amx-cpus).

Probes: the startupProbe (``/health``) allows :func:`~vkit.render.k8s_spec.startup_budget_s`
for download and load before liveness counts; liveness is ``/health`` (503 once the engine is
dead) and progress (:func:`launcher.supervision.progress.liveness_probe_command`: an engine
hung mid-step answers 200 but moves no token); readiness is "serves the model":
``/v1/models`` answered with the API key lists the served model name (``/health`` goes 200
as the HTTP server binds, before the model answers: docs/vllm-server.md#health-and-readiness).
An ``httpGet`` probe cannot take a header from a Secret, so readiness is a short Python
``exec`` in the container, reading the key from its environment.
"""

from __future__ import annotations

import math
from importlib.resources import files as package_files
from typing import Any

from launcher.sizing.fit import FitPlan
from launcher.supervision.progress import liveness_probe_command
from launcher.supervision.readiness import models_probe_script
from launcher.supervision.vllm_args import API_SERVER_MODULE
from vkit.deployment import ReplicaGroup
from vkit.deployment.images import VLLM_CPU_IMAGE, VLLM_IMAGE
from vkit.deployment.model import container_group
from vkit.deployment.service_ports import VLLM_PORT
from vkit.render.k8s_spec import (
    API_KEY_SECRET,
    HF_TOKEN_SECRET,
    PRESTOP_SLEEP_S,
    PROBE_PERIOD_S,
    VLLM_NAME,
    VLLM_PODS_SERVICE,
    K8sSpec,
    startup_budget_s,
    termination_grace_s,
)

HF_CACHE_MOUNT = "/root/.cache/huggingface"
CACHE_CLAIM = "hf-cache"  # the replica's own claim: the model, and vLLM's compile cache
VLLM_CACHE_MOUNT = "/root/.cache/vllm"  # VLLM_CACHE_ROOT
VLLM_CACHE_SUBPATH = "vllm-cache"  # its directory on the claim
AMX_SITE_MOUNT = "/opt/vkit-amx"
AMX_SITE_SOURCE = "vkit-amx-site"  # ConfigMap: launcher/supervision/amx_site/sitecustomize.py
TINY_MODEL_DIR = "/models/tiny-llama"
TINY_MODEL_SOURCE = "vkit-tiny-model"  # ConfigMap: launcher/supervision/tiny_model.py
CPU_STARTUP_S = 600
SUPERVISOR_FILE = "vllm_supervisor.py"  # vkit/render/vllm_supervisor.py, the compose one
SUPERVISOR_SOURCE = "vkit-vllm-supervisor"  # its ConfigMap
SUPERVISOR_MOUNT = "/opt/vkit-supervisor"


def labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "vkit",
    }


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name}


def readiness_script(served_model: str, port: int = VLLM_PORT) -> str:
    """Exit 0 when ``/v1/models``, asked with ``$VLLM_API_KEY``, lists ``served_model``: the
    readiness rule's own probe (:func:`launcher.supervision.readiness.models_probe_script`)."""
    return models_probe_script(port, served_model)


def vllm_statefulset_base(namespace: str) -> dict[str, Any]:
    """Everything about a replica that does not depend on the GPU, the model or the fit."""
    container = {
        "name": "vllm",
        "image": VLLM_IMAGE,
        "command": supervisor_command(),
        "ports": [{"name": "http", "containerPort": VLLM_PORT}],
        "env": [
            # CUDA numbers GPUs as nvidia-smi and DCGM do (the GPU operator's device ids).
            {"name": "CUDA_DEVICE_ORDER", "value": "PCI_BUS_ID"},
            # vLLM reads its --api-key from VLLM_API_KEY: the secret stays off the command line.
            {"name": "VLLM_API_KEY", "valueFrom": secret_ref(API_KEY_SECRET, "VLLM_API_KEY")},
            {
                "name": "HF_TOKEN",
                "valueFrom": secret_ref(HF_TOKEN_SECRET, "HF_TOKEN", optional=True),
            },
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
            {"name": "VLLM_CACHE_ROOT", "value": VLLM_CACHE_MOUNT},
        ],
        "volumeMounts": [
            {"name": CACHE_CLAIM, "mountPath": HF_CACHE_MOUNT},
            {"name": CACHE_CLAIM, "mountPath": VLLM_CACHE_MOUNT, "subPath": VLLM_CACHE_SUBPATH},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "vllm-supervisor", "mountPath": SUPERVISOR_MOUNT, "readOnly": True},
        ],
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 5,
        },
        # /health 200 and no stall (requests running, no progress): launcher/supervision/progress.py
        "livenessProbe": {
            "exec": {"command": liveness_probe_command(VLLM_PORT)},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 10,  # two GETs of at most 4 s each
            "failureThreshold": 3,
        },
        # Out of the endpoints first, then SIGTERM: vLLM drains for --shutdown-timeout.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": VLLM_NAME,
            "namespace": namespace,
            "labels": labels(VLLM_NAME, "inference"),
        },
        "spec": {
            "serviceName": VLLM_PODS_SERVICE,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(VLLM_NAME)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels(VLLM_NAME, "inference")},
                "spec": {
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [container],
                    # Shared memory for tensor parallel's NCCL and the engine's IPC.
                    "volumes": [
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {"name": "vllm-supervisor", "configMap": {"name": SUPERVISOR_SOURCE}},
                    ],
                },
            },
        },
    }


def supervisor_command() -> list[str]:
    """The replica's command: the compose replicas' supervisor (stdlib only, so the stock
    vLLM image runs it) over the server, for its start-up healing alone: ``--failures 0``
    and ``--stall-after 0`` leave health and progress to the kubelet's probes."""
    health = f"http://127.0.0.1:{VLLM_PORT}/health"
    flags = ["--health-url", health, "--failures", "0", "--stall-after", "0"]
    server = ["python3", "-m", API_SERVER_MODULE]
    return ["python3", f"{SUPERVISOR_MOUNT}/{SUPERVISOR_FILE}", *flags, "--", *server]


def supervisor_configmap(namespace: str) -> dict[str, Any]:
    """The supervisor's text (the kit's package data), mounted at ``SUPERVISOR_MOUNT``."""
    text = package_files("vkit.render").joinpath(SUPERVISOR_FILE).read_text(encoding="utf-8")
    return source_configmap(SUPERVISOR_SOURCE, namespace, SUPERVISOR_FILE, text)


def secret_ref(name: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "key": key}
    if optional:
        ref["optional"] = True
    return {"secretKeyRef": ref}


def replica_group(spec: K8sSpec, plan: FitPlan) -> ReplicaGroup:
    """The StatefulSet's pods as a replica group: vLLM's settings as ``vkit launch`` takes
    them (what the checkpoint and its online quantization are: :mod:`vkit.render.k8s_plan`),
    at least ``min_replicas`` of them."""
    return container_group(
        model=spec.hf_model,
        served_model=spec.model,
        plan=plan,
        quant=spec.vllm_quant,
        shutdown_timeout_s=spec.shutdown_timeout_s,
        enforce_eager=spec.cpu,
        replicas=spec.min_replicas,
    )


def vllm_args(spec: K8sSpec, plan: FitPlan) -> list[str]:
    """The launcher's tuned flags (no engine prefix: ``command`` runs the server)."""
    return replica_group(spec, plan).vllm_argv(engine=[])


def shm_gib(tensor_parallel: int) -> int:
    return 2 * tensor_parallel


def cache_gib(plan: FitPlan) -> int:
    """The HF cache volume: the checkpoint (all shards) with room to spare."""
    return max(10, math.ceil(plan.weights_gib * plan.tensor_parallel * 1.5) + 10)


def vllm_resources(spec: K8sSpec, plan: FitPlan) -> dict[str, Any]:
    """GPUs, and host memory for loading the weights plus the shared-memory volume."""
    if spec.cpu:
        memory = f"{math.ceil(plan.budget_gib) + 5}Gi"
        return {"requests": {"cpu": "2", "memory": memory}, "limits": {"memory": memory}}
    weights = math.ceil(plan.weights_gib * plan.tensor_parallel)
    memory = f"{weights + 8 + shm_gib(plan.tensor_parallel)}Gi"
    gpus = str(plan.tensor_parallel)
    return {
        "requests": {
            "cpu": str(4 * plan.tensor_parallel),
            "memory": memory,
            "nvidia.com/gpu": gpus,
        },
        "limits": {"memory": memory, "nvidia.com/gpu": gpus},
    }


def vllm_startup_s(spec: K8sSpec, plan: FitPlan) -> int:
    """Seconds a replica may take to start before liveness counts."""
    if spec.cpu:
        return CPU_STARTUP_S
    return startup_budget_s(plan.weights_gib * plan.tensor_parallel)


def vllm_statefulset_patch(spec: K8sSpec, plan: FitPlan) -> dict[str, Any]:
    """The strategic-merge patch an overlay applies to the base StatefulSet."""
    startup_s = vllm_startup_s(spec, plan)
    container: dict[str, Any] = {
        "name": "vllm",
        "args": vllm_args(spec, plan),
        "resources": vllm_resources(spec, plan),
        "startupProbe": {"failureThreshold": startup_s // PROBE_PERIOD_S},
        "readinessProbe": {
            "exec": {"command": ["python3", "-c", readiness_script(spec.model)]},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": termination_grace_s(spec.shutdown_timeout_s)
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib(spec.tensor_parallel)}Gi"},
        }
    ]
    if spec.cpu:
        container["image"] = VLLM_CPU_IMAGE
        container["env"] = [
            {"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(math.ceil(plan.budget_gib))},
            {"name": "PYTHONPATH", "value": AMX_SITE_MOUNT},
        ]
        container["volumeMounts"] = [
            {"name": "models", "mountPath": "/models"},
            {"name": "amx-site", "mountPath": AMX_SITE_MOUNT, "readOnly": True},
        ]
        pod["initContainers"] = [tiny_model_init_container()]
        volumes += [
            {"name": "models", "emptyDir": {}},
            {"name": "tiny-model-source", "configMap": {"name": TINY_MODEL_SOURCE}},
            {"name": "amx-site", "configMap": {"name": AMX_SITE_SOURCE}},
        ]
    else:
        pod["nodeSelector"] = {"nvidia.com/gpu.product": spec.gpu_product or spec.gpu}
    pod["containers"] = [container]
    pod["volumes"] = volumes
    claim = {
        "metadata": {"name": CACHE_CLAIM},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{cache_gib(plan)}Gi"}},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": VLLM_NAME, "namespace": spec.namespace},
        "spec": {"template": {"spec": pod}, "volumeClaimTemplates": [claim]},
    }


def tiny_model_init_container() -> dict[str, Any]:
    """Builds the tiny random Llama with the launcher's own builder (a ConfigMap of its
    source; it needs torch and transformers, which the vLLM CPU image has)."""
    build = (
        "import sys; sys.path.insert(0, '/opt/vkit'); from pathlib import Path; "
        f"from tiny_model import build_tiny_model; build_tiny_model(Path({TINY_MODEL_DIR!r}))"
    )
    return {
        "name": "tiny-model",
        "image": VLLM_CPU_IMAGE,
        "command": ["python3", "-c", build],
        "volumeMounts": [
            {"name": "models", "mountPath": "/models"},
            {"name": "tiny-model-source", "mountPath": "/opt/vkit", "readOnly": True},
        ],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
    }


def source_configmap(name: str, namespace: str, filename: str, text: str) -> dict[str, Any]:
    """A ConfigMap holding one source file, mounted as a directory."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {filename: text},
    }


def amx_site_configmap(namespace: str, source: str) -> dict[str, Any]:
    """The launcher's AMX ``sitecustomize`` (its text), for the CPU replicas' PYTHONPATH."""
    return source_configmap(AMX_SITE_SOURCE, namespace, "sitecustomize.py", source)


def tiny_model_configmap(namespace: str, source: str) -> dict[str, Any]:
    return source_configmap(TINY_MODEL_SOURCE, namespace, "tiny_model.py", source)
