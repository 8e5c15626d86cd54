"""A deployment file's groups as one kustomize overlay: a StatefulSet per group.

    vkit render k8s --deployment models.yaml --out deploy/k8s

The first group is the base's ``vllm`` StatefulSet, patched as a single-model overlay patches
it; every other group is a StatefulSet of its own, ``vllm-<group>``, built from the same base
and its own fit-made patch, with its headless Service ``vllm-<group>-pods``, its
PodDisruptionBudget, NetworkPolicy and (with monitoring) PodMonitor. Each group runs a fixed
number of replicas (its GPU sets), or, where it states ``autoscaling``, scales between its
``min_replicas`` and ``max_replicas`` by its own KEDA ScaledObject (or HPA) on its own
StatefulSet, on its model's vLLM queue (:mod:`vkit.render.k8s_autoscaling`: the queries
select the served name). The
gateway routes ``aware`` over the pods it discovers behind every group's headless Service:
``VKIT_GATEWAY_DISCOVERY__DNS_NAMES`` lists them (``name:port``), beside the base's
``dns_name`` (the first group's), and it learns which pod serves which model from their
``/v1/models``. LoRA: the group's flags on its replicas, and the runtime-update switch in
their environment where the group allows it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from gateway.settings_env import settings_from_values
from launcher.errors import InvalidInput
from launcher.sizing.gpus import get_gpu
from launcher.sizing.lora import lora_env, lora_flags
from launcher.supervision.launch_spec import loaded_checkpoint
from vkit.deployment.deployment_file import DeploymentFile
from vkit.deployment.group_fit import GroupFit
from vkit.deployment.model import expected_models
from vkit.deployment.service_ports import VLLM_PORT
from vkit.render.compose import group_slug
from vkit.render.k8s_autoscaling import (
    autoscaling_objects,
    prometheus_adapter_values,
    scale_target,
)
from vkit.render.k8s_bundle import (
    K8sBundle,
    Sources,
    base_files,
    dump_all,
    gateway_patch,
    kustomization,
    monitoring_files,
    same_object,
    strategic_merge,
)
from vkit.render.k8s_manifests import (
    base_gateway_values,
    base_objects,
    network_policy,
    pdb,
    service,
)
from vkit.render.k8s_monitoring import monitoring_objects, pod_monitor
from vkit.render.k8s_spec import (
    NAMESPACE,
    VLLM_NAME,
    VLLM_PODS_SERVICE,
    K8sSpec,
    gpu_product_label,
)
from vkit.render.k8s_vllm import (
    TINY_MODEL_DIR,
    amx_site_configmap,
    labels,
    selector,
    tiny_model_configmap,
    vllm_statefulset_patch,
)

__all__ = ["DNS_NAMES_VAR", "group_autoscaling", "group_specs", "render_k8s_groups_bundle"]

DNS_NAMES_VAR = "VKIT_GATEWAY_DISCOVERY__DNS_NAMES"


def group_autoscaling(fit: GroupFit) -> dict[str, Any]:
    """The spec's autoscaling fields: the group's autoscaler between its bounds, each replica
    targeted at its ``scale_target`` (default: the capacity planner's concurrency per GPU at
    its per-user speed, times ``tp``, as a single-model render); or its GPU sets, fixed."""
    auto = fit.entry.autoscaling
    if auto is None:
        count = len(fit.gpu_sets)
        return {"autoscaler": "none", "min_replicas": count, "max_replicas": max(1, count)}
    target = auto.scale_target
    if target is None:
        planned = 0 if fit.cpu else scale_target(fit.gpu, fit.entry.model, fit.entry.quant)
        target = planned * fit.entry.tp if not fit.cpu else 1
        if target == 0:
            raise InvalidInput(
                f"group {fit.name!r}: the capacity planner finds no concurrency at which it "
                "reaches its per-user speed: give autoscaling.scale_target"
            )
    return {
        "autoscaler": auto.autoscaler,
        "min_replicas": auto.min_replicas,
        "max_replicas": auto.max_replicas,
        "scale_target": target,
    }


def group_specs(file: DeploymentFile, fits: list[GroupFit]) -> list[K8sSpec]:
    """Each group as the one-model spec its StatefulSet is patched from (served name as the
    model, its autoscaling or its GPU sets as a fixed replica count)."""
    specs = []
    for fit in fits:
        entry = fit.entry
        if fit.cpu and entry.model == "tiny-llama":
            hf_model, vllm_quant = TINY_MODEL_DIR, entry.quant
        else:
            hf_model, vllm_quant = loaded_checkpoint(entry.model, entry.quant)
        product = None if fit.cpu else gpu_product_label(get_gpu(fit.gpu).name)
        specs.append(
            K8sSpec(
                gpu=fit.gpu,
                gpu_product=product,
                model=entry.name,
                hf_model=hf_model,
                quant=entry.quant,
                vllm_quant=vllm_quant,
                tensor_parallel=entry.tp,
                shutdown_timeout_s=file.shutdown_timeout,
                **group_autoscaling(fit),
            )
        )
    return specs


def statefulset_name(index: int, spec: K8sSpec) -> str:
    return VLLM_NAME if index == 0 else f"{VLLM_NAME}-{group_slug(spec.model)}"


def pods_service(name: str) -> str:
    return VLLM_PODS_SERVICE if name == VLLM_NAME else f"{name}-pods"


def group_patch(index: int, spec: K8sSpec, fit: GroupFit) -> dict[str, Any]:
    """The single-model patch of the group, with its replica count (the autoscaler's least)
    and LoRA."""
    patch = vllm_statefulset_patch(spec, fit.plan)
    patch["metadata"]["name"] = statefulset_name(index, spec)
    patch["spec"]["replicas"] = spec.min_replicas
    lora = fit.entry.lora_settings
    if lora is not None:
        container = patch["spec"]["template"]["spec"]["containers"][0]
        container["args"] = [*container["args"], *lora_flags(lora)]
        env = [{"name": k, "value": v} for k, v in lora_env(lora).items()]
        if env:
            container["env"] = [*container.get("env", []), *env]
    return patch


def extra_group_objects(
    index: int, spec: K8sSpec, fit: GroupFit, monitoring: bool
) -> list[dict[str, Any]]:
    """A group beyond the first: its StatefulSet (the base's, renamed, with its patch), its
    headless Service, PodDisruptionBudget, NetworkPolicy and PodMonitor."""
    name = statefulset_name(index, spec)
    base = next(o for o in base_objects(NAMESPACE) if o["kind"] == "StatefulSet")
    renamed = copy.deepcopy(base)
    renamed["metadata"]["name"] = name
    renamed["metadata"]["labels"] = labels(name, "inference")
    renamed["spec"]["serviceName"] = pods_service(name)
    renamed["spec"]["selector"] = {"matchLabels": selector(name)}
    renamed["spec"]["template"]["metadata"]["labels"] = labels(name, "inference")
    statefulset = strategic_merge(renamed, group_patch(index, spec, fit))
    headless = service(pods_service(name), NAMESPACE, "inference", VLLM_PORT, headless=True)
    headless["spec"]["selector"] = selector(name)
    vllm_policy = next(
        o for o in base_objects(NAMESPACE) if o["metadata"]["name"] == "vllm-ingress"
    )
    policy = network_policy(name, NAMESPACE, copy.deepcopy(vllm_policy["spec"]["ingress"]))
    objects = [
        statefulset,
        headless,
        pdb(name, NAMESPACE, "inference", {"maxUnavailable": 1}),
        policy,
    ]
    if monitoring:
        objects.append(pod_monitor(NAMESPACE, name, "http"))
    return objects


def dns_names(specs: list[K8sSpec]) -> list[str]:
    """``name:port`` of every group's headless Service."""
    return [
        f"{pods_service(statefulset_name(i, spec))}.{NAMESPACE}.svc:{VLLM_PORT}"
        for i, spec in enumerate(specs)
    ]


def groups_gateway_patch(specs: list[K8sSpec]) -> dict[str, Any]:
    """The gateway: aware routing, no expected model per pod, every group's Service."""
    values = base_gateway_values(NAMESPACE)
    values["health"] = {"expected_models": expected_models([spec.model for spec in specs])}
    values["routing"] = "aware"
    values["router"] = {"key_table_size": 0}  # several gateways: the ring alone decides
    patch = gateway_patch(specs[0], settings_from_values(values))
    env = patch["spec"]["template"]["spec"]["containers"][0]["env"]
    env.append({"name": DNS_NAMES_VAR, "value": json.dumps(dns_names(specs))})
    return patch


def render_k8s_groups_bundle(
    file: DeploymentFile, fits: list[GroupFit], sources: Sources, *, name: str, command: str
) -> K8sBundle:
    """base/, components/ and ``overlays/<name>``; :attr:`K8sBundle.objects` as built."""
    header = f"# Rendered by `{command}`; edit the renderer (or re-render), not this file.\n"
    specs = group_specs(file, fits)
    first = specs[0]
    files = base_files(first)
    files.update(monitoring_files(first, sources))
    root = f"overlays/{name}"
    own: list[dict[str, Any]] = []
    for index in range(1, len(specs)):
        own += extra_group_objects(index, specs[index], fits[index], first.monitoring)
    for index, spec in enumerate(specs):
        own += autoscaling_objects(spec, statefulset_name(index, spec))
    hpa = next((spec for spec in specs if spec.autoscaler == "hpa"), None)
    if hpa is not None:  # one set of adapter rules serves every group's HPA
        files[f"{root}/prometheus-adapter-values.yaml"] = (
            header + "# Helm values for prometheus-community/prometheus-adapter "
            "(not a kustomize resource).\n" + dump_all([prometheus_adapter_values(hpa)])
        )
    if any(spec.cpu for spec in specs):
        own += [
            tiny_model_configmap(NAMESPACE, sources.tiny_model),
            amx_site_configmap(NAMESPACE, sources.amx_site),
        ]
    resources = ["../../base"]
    if own:
        files[f"{root}/groups.yaml"] = header + dump_all(own)
        resources.append("groups.yaml")
    patches = [group_patch(0, first, fits[0]), groups_gateway_patch(specs)]
    files[f"{root}/vllm-patch.yaml"] = header + dump_all([patches[0]])
    files[f"{root}/gateway-patch.yaml"] = header + dump_all([patches[1]])
    body: dict[str, Any] = {
        "resources": resources,
        "components": ["../../components/monitoring"],
        "patches": [{"path": "vllm-patch.yaml"}, {"path": "gateway-patch.yaml"}],
    }
    files[f"{root}/kustomization.yaml"] = header + kustomization(body)
    objects = [copy.deepcopy(obj) for obj in base_objects(NAMESPACE, first.gateway_image)]
    for patch in patches:
        target = next(o for o in objects if same_object(o, patch))
        objects[objects.index(target)] = strategic_merge(target, patch)
    objects += monitoring_objects(NAMESPACE, sources.rules, sources.dashboard)
    objects += own
    return K8sBundle(files, objects)
