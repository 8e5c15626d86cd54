"""The compose bundle of a deployment file: several replica groups behind one gateway.

    vkit render compose --deployment models.yaml --out deploy/models/compose.yaml

Each group's replicas are services ``vllm-<group>-<set>`` (:func:`~vkit.render.compose.
replica_service_name`), on the GPUs of their set (groups that share a GPU reserve it each,
with their share of its memory as ``--gpu-memory-utilization``). The gateway routes by model
(``routing: aware``): every replica's URL is one of its upstreams, and it learns which serves
which model from each replica's ``/v1/models``; there is no NGINX over the replicas. vLLM
loads each group's catalog checkpoint unless ``.env`` names another in
``VLLM_MODEL_<GROUP>``. Everything else is the single-model bundle's
(:func:`vkit.render.bundle.render_compose_bundle`).
"""

from __future__ import annotations

from typing import Any

from gateway.settings import GatewaySettings
from gateway.settings_env import settings_from_values
from launcher.supervision.launch_spec import loaded_checkpoint
from vkit.deployment import Deployment, DrainBudget, Images, ReplicaGroup
from vkit.deployment.deployment_file import DeploymentFile
from vkit.deployment.drain import GATEWAY_TOTAL_TIMEOUT_S
from vkit.deployment.group_fit import GroupFit
from vkit.deployment.images import COMPOSE_GATEWAY_IMAGE
from vkit.deployment.model import container_group
from vkit.deployment.service_ports import (
    DCGM_PORT,
    GATEWAY_ADMIN_PORT,
    GATEWAY_PORT,
    REDIS_PORT,
    VLLM_PORT,
    replica_url,
)
from vkit.edge_conf import EdgeLimits
from vkit.render.alertmanager import ALERTMANAGER_PORT, render_alertmanager_files
from vkit.render.bundle import (
    COMPOSE_FILE,
    COST_RULES_FILE,
    ENV_EXAMPLE_FILE,
    GITIGNORE,
    GITIGNORE_FILE,
    PROMETHEUS_FILE,
    compose_edge_site,
    copied_files,
    dump_yaml,
    header,
)
from vkit.render.compose import (
    API_KEY_VAR,
    GATEWAY_BUILD_CONTEXT,
    GATEWAY_HF_MOUNT,
    KEYS_DIR_MOUNT,
    KEYS_FILE_NAME,
    LEDGER_VALUES,
    compose_file,
    group_slug,
    replica_services,
)
from vkit.render.compose_adapters import (
    adapter_mounts,
    adapter_variable,
    container_lora,
    host_adapters,
)
from vkit.render.compose_cpu import CPU_IMAGE, cpu_group, tokenizer_source
from vkit.render.compose_env import Variable, bundle_variables, render_env_example
from vkit.render.compose_services import EDGE_SITE_FILE
from vkit.render.gateway_build import gateway_build_files
from vkit.render.groups_gateway import groups_gateway_values
from vkit.render.prometheus import build_cost_rules, build_prometheus_config

__all__ = ["groups_deployment", "model_variable", "render_groups_bundle"]


def model_variable(group: str) -> str:
    """The ``.env`` variable that names another checkpoint for a group."""
    return "VLLM_MODEL_" + group_slug(group).upper().replace("-", "_")


def _group(fit: GroupFit, shutdown_timeout_s: int) -> ReplicaGroup:
    entry = fit.entry
    if fit.cpu:
        group = cpu_group(
            model=entry.model,
            plan=fit.plan,
            cores=fit.gpu_sets,
            shutdown_timeout_s=shutdown_timeout_s,
        )
        launch = group.launch.model_copy(
            update={"served_model_name": entry.name, "lora": container_lora(entry.lora_settings)}
        )
        return group.model_copy(update={"launch": launch})
    checkpoint, _ = loaded_checkpoint(entry.model, entry.quant)
    return container_group(
        model=entry.model,
        served_model=entry.name,
        plan=fit.plan,
        quant=fit.plan.quant,
        shutdown_timeout_s=shutdown_timeout_s,
        gpu_sets=fit.gpu_sets,
        load=f"${{{model_variable(entry.name)}:-{checkpoint}}}",
        lora=container_lora(entry.lora_settings),
    )


def _tokenizer(group: ReplicaGroup) -> str:
    if group.launch.cpu:
        return tokenizer_source(group.launch.model, GATEWAY_HF_MOUNT) or group.launch.model
    return group.load or group.launch.model


def groups_gateway(groups: tuple[ReplicaGroup, ...], upstreams: list[str]) -> GatewaySettings:
    """The gateway over every group (:func:`~vkit.render.groups_gateway.groups_gateway_values`)
    in the compose network."""
    values: dict[str, Any] = {
        "host": "0.0.0.0",
        "port": GATEWAY_PORT,
        "admin_host": "0.0.0.0",
        "admin_port": GATEWAY_ADMIN_PORT,
        **groups_gateway_values(groups, upstreams, _tokenizer),
        "upstream_api_key": API_KEY_VAR,
        "keys_file": f"{KEYS_DIR_MOUNT}/{KEYS_FILE_NAME}",
        "redis_url": f"redis://redis:{REDIS_PORT}/0",
        "ledger": LEDGER_VALUES,
        "timeouts": {"total": GATEWAY_TOTAL_TIMEOUT_S},
    }
    values["tokenizers"]["hf_cache"] = f"{GATEWAY_HF_MOUNT}/hub"
    return settings_from_values(values)


def groups_deployment(file: DeploymentFile, fits: list[GroupFit]) -> Deployment:
    """The file's groups as one :class:`~vkit.deployment.Deployment` for compose."""
    groups = tuple(_group(fit, file.shutdown_timeout) for fit in fits)
    draft = Deployment(
        groups=groups,
        gateway=settings_from_values({"routing": "aware"}),
        images=Images(gateway=COMPOSE_GATEWAY_IMAGE, vllm_cpu=CPU_IMAGE),
        drain=DrainBudget(replica_s=file.shutdown_timeout, gateway_s=GATEWAY_TOTAL_TIMEOUT_S),
    )
    upstreams = [replica_url(name) for name, _, _ in replica_services(draft)]
    return draft.model_copy(update={"gateway": groups_gateway(groups, upstreams)})


def _cost_rules(fits: list[GroupFit]) -> dict[str, Any]:
    """One price series per GPU of a priced kind (a shared GPU once)."""
    rules: list[dict[str, Any]] = []
    seen: set[str] = set()
    for fit in fits:
        if fit.price_per_hour is None:
            continue
        ids = [i for gpu_set in fit.gpu_sets for i in gpu_set.ids if i not in seen]
        seen.update(ids)
        rules += build_cost_rules(ids, fit.gpu, fit.price_per_hour)["groups"][0]["rules"]
    return {"groups": [{"name": "vkit-gpu-prices", "rules": rules}]}


def _variables(deployment: Deployment, file: DeploymentFile) -> list[Variable]:
    shared = [v for v in bundle_variables(None) if v.name != "VLLM_MODEL"]
    own = [
        Variable(
            model_variable(group.served_model),
            f"The checkpoint group {group.served_model} serves (default: the catalog's, as\n"
            "rendered); it must match the group's quantization.",
        )
        for group in deployment.groups
        if not group.launch.cpu
    ]
    adapters = [
        Variable(
            adapter_variable(adapter.name),
            f"The host directory of adapter {adapter.name} (default: {adapter.source}, as\n"
            "rendered), mounted read-only into its group's replicas.",
        )
        for entry in file.groups
        for adapter in host_adapters(entry.lora_settings)
    ]
    return own + adapters + shared


def render_groups_bundle(
    file: DeploymentFile, fits: list[GroupFit], command: str
) -> dict[str, str]:
    """compose.yaml, Prometheus over every replica, the edge, Alertmanager, ``.env.example``
    and what the compose file mounts or builds."""
    deployment = groups_deployment(file, fits)
    replicas = [f"{name}:{VLLM_PORT}" for name, _, _ in replica_services(deployment)]
    gpus = not all(fit.cpu for fit in fits)
    prometheus = build_prometheus_config(
        replicas,
        f"gateway:{GATEWAY_ADMIN_PORT}",
        f"dcgm-exporter:{DCGM_PORT}" if gpus else None,
        alertmanager_target=f"alertmanager:{ALERTMANAGER_PORT}",
    )
    compose = compose_file(deployment)
    mounts = {entry.name: adapter_mounts(entry.lora_settings) for entry in file.groups}
    for name, group, _ in replica_services(deployment):
        compose["services"][name]["volumes"] += mounts[group.served_model]
    files = {
        COMPOSE_FILE: header(command) + dump_yaml(compose),
        EDGE_SITE_FILE: compose_edge_site(EdgeLimits.for_gateway(deployment.gateway)),
        PROMETHEUS_FILE: header(command) + dump_yaml(prometheus),
        COST_RULES_FILE: header(command) + dump_yaml(_cost_rules(fits)),
        ENV_EXAMPLE_FILE: render_env_example(_variables(deployment, file)),
        GITIGNORE_FILE: GITIGNORE,
    }
    files.update(render_alertmanager_files(header(command)))
    files.update(copied_files())
    files.update(gateway_build_files(GATEWAY_BUILD_CONTEXT))
    return files
