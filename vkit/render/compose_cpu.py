"""The compose file's CPU variant (``vkit render compose --gpu cpu``): the bundle on a laptop.

    >>> group = cpu_group(model="tiny-llama", plan=plan, cores=(GpuSet(("0",)),),
    ...                   shutdown_timeout_s=30)
    >>> launch_args(group.replica_launch(0))[:6]
    ['--model', 'tiny-llama', '--host', '0.0.0.0', '--port', '8000']

``--gpus`` names CPU cores there: one replica per core, its engine pinned to it
(``VLLM_CPU_OMP_THREADS_BIND``: vLLM's ``auto`` put every replica on core 0,
docs/cpu-engine.md#cpu-pinning). Each replica runs the CPU engine image
(``deploy/images/vllm-cpu.Dockerfile``: vLLM's CPU build and the kit) and in it ``vkit launch
--cpu`` under the compose supervisor, as ``vkit up`` runs its replicas: start-up healing, the
AMX tile request in every Python process, and ``--model tiny-llama`` built on first use into
the shared Hugging Face cache volume, where the gateway finds its tokenizer. No GPU is
reserved and there is no DCGM exporter; everything else is the GPU bundle's.
"""

from __future__ import annotations

from typing import Any

from launcher.sizing.fit import FitPlan
from launcher.sizing.gpu_sets import GpuSet
from launcher.supervision.tiny_model import TINY_MODEL_NAME
from vkit.deployment import ReplicaGroup
from vkit.deployment.images import COMPOSE_VLLM_CPU_IMAGE
from vkit.deployment.launch_args import KV_CACHE_SPACE_VAR, launch_args
from vkit.deployment.model import container_group

CPU = "cpu"  # the --gpu value of the CPU variant (as for `vkit render k8s`)
CPU_KV_CACHE_GIB = 1
# Inside the replicas' Hugging Face cache volume, so that the gateway (which mounts it
# read-only) reads the tiny model's tokenizer; built once, atomically, by the first replica.
MODELS_SUBDIR = "vkit-models"
LAUNCH_SERVER = ["vkit", "launch"]
# The CPU engine image with the kit (deploy/images/vllm-cpu.Dockerfile; vLLM's own CPU image
# has no kit to run `vkit launch`).
CPU_IMAGE = COMPOSE_VLLM_CPU_IMAGE


def is_cpu(gpu: str) -> bool:
    return gpu.lower() == CPU


def cpu_group(
    *, model: str, plan: FitPlan, cores: tuple[GpuSet, ...], shutdown_timeout_s: int
) -> ReplicaGroup:
    """One replica per core: ``vkit launch --cpu`` on the model (``tiny-llama``: the built-in
    one), without torch.compile (healthy in ~50 s instead of ~100 s), at the plan's context."""
    group = container_group(
        model=model,
        served_model=model,
        plan=plan,
        quant=plan.quant,
        shutdown_timeout_s=shutdown_timeout_s,
        enforce_eager=True,
        gpu_sets=cores,
    )
    cpu = {"cpu": True, "max_model_len": plan.max_model_len, "kv_cache_space_gib": CPU_KV_CACHE_GIB}
    return group.model_copy(update={"launch": group.launch.model_copy(update=cpu)})


def models_dir(hf_home: str) -> str:
    """Where ``vkit launch`` builds the tiny model, under a mount of the HF cache volume."""
    return f"{hf_home}/{MODELS_SUBDIR}"


def tokenizer_source(model: str, gateway_hf_mount: str) -> str | None:
    """The gateway's tokenizer directory for the built-in tiny model (None: another model,
    looked up in the HF cache as on a GPU box)."""
    if model != TINY_MODEL_NAME:
        return None
    return f"{models_dir(gateway_hf_mount)}/{TINY_MODEL_NAME}"


def cpu_replica(
    service: dict[str, Any], group: ReplicaGroup, core: GpuSet, *, hf_home: str, image: str
) -> dict[str, Any]:
    """The GPU replica service of ``core`` made a CPU one: the CPU engine image, ``vkit
    launch`` under the same supervisor, the engine's CPU settings, no GPU reservation."""
    cpu = {key: value for key, value in service.items() if key not in ("deploy", "ipc")}
    entrypoint = list(service["entrypoint"])
    server_at = entrypoint.index("--") + 1
    cpu["image"] = image
    # `vkit launch` heals its own start-up errors: the supervisor's healing stays off.
    supervisor = entrypoint[:server_at]
    heals_at = supervisor.index("--max-heals") + 1
    supervisor[heals_at] = "0"
    cpu["entrypoint"] = supervisor + LAUNCH_SERVER
    settings = group.launch
    cpu["command"] = launch_args(settings)
    environment = {
        key: value
        for key, value in service["environment"].items()
        if key not in ("CUDA_DEVICE_ORDER", "NCCL_DEBUG")
    }
    environment.update(
        {
            KV_CACHE_SPACE_VAR: str(settings.kv_cache_space_gib),
            "VLLM_CPU_OMP_THREADS_BIND": ",".join(core.ids),
            "VKIT_MODELS_DIR": models_dir(hf_home),
        }
    )
    if settings.model == TINY_MODEL_NAME:
        environment["HF_HUB_OFFLINE"] = "1"  # built here: nothing to download
    cpu["environment"] = environment
    # PyTorch's and the engine's shared memory without the host's IPC namespace.
    cpu["shm_size"] = "1gb"
    return cpu
