"""A kustomize tree for one deployment, and the objects ``kubectl kustomize`` builds from it.

    >>> bundle = render_k8s_bundle(spec, plan, sources, price_per_hour=0.39, command="vkit ...")
    >>> sorted(bundle.files)[:2]
    ['base/gateway.yaml', 'base/kustomization.yaml']
    >>> [o["kind"] for o in bundle.objects][:2]
    ['Namespace', 'StatefulSet']

Layout (paths relative to ``deploy/k8s``)::

    base/                    fit-independent: gateway, Redis, the vLLM StatefulSet's base,
                             Services, PodDisruptionBudgets, NetworkPolicies
    components/monitoring/   PodMonitors, the PrometheusRule, the dashboard (a Component)
    overlays/<name>/         one deployment: the fit solver's patch of the StatefulSet, the
                             gateway's expected model, autoscaling, GPU prices

Every render writes ``base/`` and ``components/`` too (they are the same for every overlay),
so any one ``vkit render k8s --out deploy/k8s`` command refreshes them. :attr:`K8sBundle.objects`
is the overlay built: the base with the overlay's strategic-merge patches applied
(:func:`strategic_merge`, the subset of kustomize's rules these patches use), plus the
component's and the overlay's own objects.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.settings import GatewaySettings
from gateway.settings_env import settings_env, settings_from_values
from launcher.sizing.fit import FitPlan
from vkit.deployment import Deployment, DrainBudget, Images
from vkit.deployment.images import VLLM_CPU_IMAGE, VLLM_IMAGE
from vkit.render.k8s_autoscaling import autoscaling_objects, prometheus_adapter_values
from vkit.render.k8s_ledger import (
    ledger_deployment_spec,
    ledger_env,
    ledger_objects,
    ledger_patches,
    ledger_values,
)
from vkit.render.k8s_manifests import (
    GATEWAY_DRAIN_S,
    base_gateway_values,
    base_objects,
    env_list,
)
from vkit.render.k8s_monitoring import gpu_price_rule, monitoring_objects
from vkit.render.k8s_spec import GATEWAY_NAME, K8sSpec
from vkit.render.k8s_vllm import (
    amx_site_configmap,
    replica_group,
    tiny_model_configmap,
    vllm_startup_s,
    vllm_statefulset_patch,
)

KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
COMPONENT_API = "kustomize.config.k8s.io/v1alpha1"
SHARED_HEADER = (
    "# Rendered by `vkit render k8s --out deploy/k8s` (every overlay's command writes it);\n"
    "# edit the renderer (or re-render), not this file.\n"
)
# Lists of objects merged by a key, as Kubernetes' strategic merge patch does for these
# fields (containers, env, volumes, ports by name; volumeMounts by mountPath); other lists
# are replaced.
MERGE_KEYS = ("name", "mountPath")
MONITORING_FILES = {"PodMonitor": "pod-monitors.yaml", "PrometheusRule": "prometheus-rule.yaml"}


@dataclass(frozen=True)
class Sources:
    """The files a render reads: compose's rules and dashboard, the tiny model's builder,
    the CPU engine's AMX ``sitecustomize``."""

    rules: str
    dashboard: str
    tiny_model: str
    amx_site: str


@dataclass(frozen=True)
class K8sBundle:
    files: dict[str, str]  # path under deploy/k8s -> text
    objects: list[dict[str, Any]]  # what `kubectl kustomize overlays/<name>` builds


def dump_all(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=4096)


def kustomization(body: dict[str, Any], *, component: bool = False) -> str:
    kind = (
        {"apiVersion": COMPONENT_API, "kind": "Component"}
        if component
        else {
            "apiVersion": KUSTOMIZE_API,
            "kind": "Kustomization",
        }
    )
    return dump_all([{**kind, **body}])


def base_files(spec: K8sSpec) -> dict[str, str]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for obj in base_objects(spec.namespace, spec.gateway_image):
        groups.setdefault(f"base/{base_file_of(obj)}", []).append(obj)
    files = {path: SHARED_HEADER + dump_all(objs) for path, objs in groups.items()}
    names = [path.removeprefix("base/") for path in groups]
    files["base/kustomization.yaml"] = SHARED_HEADER + kustomization({"resources": names})
    return dict(sorted(files.items()))


def base_file_of(obj: dict[str, Any]) -> str:
    if obj["kind"] == "Namespace":
        return "namespace.yaml"
    name = obj["metadata"]["name"].removesuffix("-ingress").removesuffix("-pods")
    return {"vkit-gateway": "gateway.yaml", "redis": "redis.yaml"}.get(name, "vllm.yaml")


def monitoring_files(spec: K8sSpec, sources: Sources) -> dict[str, str]:
    root = "components/monitoring"
    by_file: dict[str, list[dict[str, Any]]] = {}
    for obj in monitoring_objects(spec.namespace, sources.rules, sources.dashboard):
        by_file.setdefault(MONITORING_FILES.get(obj["kind"], "grafana-dashboard.yaml"), []).append(
            obj
        )
    files = {f"{root}/{name}": SHARED_HEADER + dump_all(objs) for name, objs in by_file.items()}
    body = {"resources": list(by_file)}
    files[f"{root}/kustomization.yaml"] = SHARED_HEADER + kustomization(body, component=True)
    return files


def k8s_deployment(spec: K8sSpec, plan: FitPlan) -> Deployment:
    """The overlay as a :class:`~vkit.deployment.Deployment`: the StatefulSet's replica group
    and the gateway's whole settings (base and overlay)."""
    return Deployment(
        groups=(replica_group(spec, plan),),
        gateway=gateway_settings(spec, vllm_startup_s(spec, plan)),
        images=Images(vllm=VLLM_CPU_IMAGE if spec.cpu else VLLM_IMAGE, gateway=spec.gateway_image),
        drain=DrainBudget(replica_s=spec.shutdown_timeout_s, gateway_s=GATEWAY_DRAIN_S),
    )


def gateway_settings(spec: K8sSpec, startup_s: int) -> GatewaySettings:
    """The overlay's gateway settings, whole: the base's, its expected model, routing over
    the pods that DNS discovery finds in the headless Service, and holding requests while no
    pod is ready: scale to zero's wake-up, and the restart of the only pod in a rollout of
    a one-replica StatefulSet (docs/kubernetes.md#rollouts).

    Aware routing here runs in 2+ gateways, each remembering the keys it placed
    (:mod:`gateway.routing.key_table`): side by side they would place a new tenant each its
    own way, so the ring alone decides (``key_table_size: 0``), the same in every gateway."""
    values = base_gateway_values(spec.namespace)
    values["health"] = {"expected_models": [spec.model]}
    values["routing"] = spec.routing
    if spec.routing == "aware":
        values["router"] = {"key_table_size": 0}
    values["hold"] = hold_settings(spec, startup_s)
    if spec.ledger != "off":
        values["ledger"] = ledger_values(spec.ledger)
    return settings_from_values(values)


def gateway_patch(spec: K8sSpec, settings: GatewaySettings) -> dict[str, Any]:
    """The variables of the gateway's whole ``settings`` that the base does not already set."""
    base = settings_env(settings_from_values(base_gateway_values(spec.namespace)))
    whole = settings_env(settings)
    env = env_list({name: value for name, value in whole.items() if base.get(name) != value})
    env += ledger_env(spec.ledger)
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": GATEWAY_NAME, "namespace": spec.namespace},
        "spec": {"template": {"spec": {"containers": [{"name": "gateway", "env": env}]}}},
    }
    return strategic_merge(patch, {"spec": ledger_deployment_spec(spec.ledger)})


def hold_settings(spec: K8sSpec, startup_s: int) -> dict[str, int]:
    """While no replica is ready (scale to zero, a restart): requests wait for one, at most
    ``4 x`` the per-replica target of them, for as long as a replica may take to start (its
    startupProbe budget plus two minutes for KEDA's polling and the pod's scheduling), but at
    most half the gateway's whole-request timeout, which the wait counts toward (the other
    half is for the answer); then 503 + ``Retry-After``. A replica whose cache volume holds
    the model (and the compile cache) starts well within that; the very first start, which
    downloads it, may not."""
    deadline = min(startup_s + 120, GATEWAY_DRAIN_S // 2)
    return {"max_wait": deadline, "max_queued": 4 * spec.scale_target}


def overlay_files(
    spec: K8sSpec, plan: FitPlan, sources: Sources, price_per_hour: float | None, header: str
) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The overlay's files, its patches, and its own objects."""
    root = f"overlays/{spec.overlay_name}"
    own: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    resources = ["../../base"]
    autoscaling = autoscaling_objects(spec)
    if autoscaling:
        files[f"{root}/autoscaling.yaml"] = header + dump_all(autoscaling)
        resources.append("autoscaling.yaml")
        own += autoscaling
    if spec.autoscaler == "hpa":
        values = prometheus_adapter_values(spec)
        files[f"{root}/prometheus-adapter-values.yaml"] = (
            header + "# Helm values for prometheus-community/prometheus-adapter "
            "(not a kustomize resource).\n" + dump_all([values])
        )
    if spec.monitoring and price_per_hour is not None:
        extra = [gpu_price_rule(spec, price_per_hour)]
        files[f"{root}/monitoring.yaml"] = header + dump_all(extra)
        resources.append("monitoring.yaml")
        own += extra
    if spec.cpu:
        tiny = [tiny_model_configmap(spec.namespace, sources.tiny_model)]
        files[f"{root}/tiny-model.yaml"] = header + dump_all(tiny)
        resources.append("tiny-model.yaml")
        own += tiny
        amx = [amx_site_configmap(spec.namespace, sources.amx_site)]
        files[f"{root}/amx-site.yaml"] = header + dump_all(amx)
        resources.append("amx-site.yaml")
        own += amx
    ledger = ledger_objects(spec.ledger, spec.namespace)
    if ledger:
        files[f"{root}/ledger.yaml"] = header + dump_all(ledger)
        resources.append("ledger.yaml")
        own += ledger
    vllm = vllm_statefulset_patch(spec, plan)
    gateway = gateway_patch(spec, k8s_deployment(spec, plan).gateway)
    files[f"{root}/vllm-patch.yaml"] = header + dump_all([vllm])
    files[f"{root}/gateway-patch.yaml"] = header + dump_all([gateway])
    patches = [vllm, gateway]
    paths = ["vllm-patch.yaml", "gateway-patch.yaml"]
    held = ledger_patches(spec.ledger, spec.namespace)
    if held:
        files[f"{root}/ledger-patch.yaml"] = header + dump_all(held)
        patches += held
        paths.append("ledger-patch.yaml")
    body: dict[str, Any] = {"resources": resources}
    if spec.monitoring:
        body["components"] = ["../../components/monitoring"]
    body["patches"] = [{"path": path} for path in paths]
    files[f"{root}/kustomization.yaml"] = header + kustomization(body)
    return files, patches, own


def render_k8s_bundle(
    spec: K8sSpec,
    plan: FitPlan,
    sources: Sources,
    *,
    price_per_hour: float | None,
    command: str,
) -> K8sBundle:
    header = f"# Rendered by `{command}`; edit the renderer (or re-render), not this file.\n"
    files = base_files(spec)
    if spec.monitoring:
        files.update(monitoring_files(spec, sources))
    overlay, patches, own = overlay_files(spec, plan, sources, price_per_hour, header)
    files.update(overlay)
    objects = [copy.deepcopy(obj) for obj in base_objects(spec.namespace, spec.gateway_image)]
    for patch in patches:
        target = next(o for o in objects if same_object(o, patch))
        objects[objects.index(target)] = strategic_merge(target, patch)
    if spec.monitoring:
        objects += monitoring_objects(spec.namespace, sources.rules, sources.dashboard)
    objects += own
    return K8sBundle(files, objects)


def same_object(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["kind"] == b["kind"] and a["metadata"]["name"] == b["metadata"]["name"]


def strategic_merge(base: Any, patch: Any) -> Any:
    """``patch`` over ``base``: maps merge; lists of keyed maps merge by key, the patch's
    items first (in its order, merged with their base item), then the base's other items,
    as kustomize orders them; any other value is replaced, and a key whose value is ``None``
    removed."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in base:
                merged[key] = strategic_merge(base[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        key = merge_key(base + patch)
        if key is not None:
            by_key = {item[key]: item for item in base}
            merged_list = [
                strategic_merge(by_key[item[key]], item) if item[key] in by_key else item
                for item in patch
            ]
            patched = {item[key] for item in patch}
            return copy.deepcopy(merged_list + [i for i in base if i[key] not in patched])
    return copy.deepcopy(patch)


def merge_key(items: list[Any]) -> str | None:
    for key in MERGE_KEYS:
        if items and all(isinstance(item, dict) and key in item for item in items):
            return key
    return None
