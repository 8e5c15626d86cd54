"""Each group of a deployment file fit-solved on its own GPUs: :func:`fit_groups`.

    >>> fits = fit_groups(load_deployment_file(Path("models.yaml")))
    >>> [(fit.name, fit.plan.gpu_memory_utilization) for fit in fits]
    [('chat', 0.6), ('fast', 0.31)]

A group owns the GPU sets its ``gpus`` split into (``tp`` per set, one replica each). Groups
may list the same GPUs: they then share them, each with its part of the memory
(:func:`launcher.sizing.gpu_sharing.share_gpu`), which needs the same GPU kind and the same
sets (one replica of each group on each set). A GPU that cannot hold every group on it, or
a group that does not fit where it is, is one :class:`~launcher.errors.GpuShareError` or
:class:`~launcher.errors.InvalidInput` before anything is written or started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.errors import GpuShareError, InvalidInput
from launcher.sizing.checkpoints import served_checkpoint
from launcher.sizing.fit import CpuTarget, FitPlan, FitRequest, check_plan_ttft, plan_fit
from launcher.sizing.gpu_sets import GpuSet, split_gpu_sets
from launcher.sizing.gpu_sharing import ShareClaim, share_gpu
from launcher.sizing.gpus import GpuProfile, get_gpu, normalize_gpu_name
from launcher.sizing.models import ModelSpec, load_model
from launcher.supervision.launch_spec import LaunchSettings
from vkit.deployment.deployment_file import CPU, DeploymentFile, GroupEntry

__all__ = ["CPU_KV_CACHE_GIB", "GroupFit", "fit_groups", "group_launch"]

CPU_KV_CACHE_GIB = 1


@dataclass(frozen=True)
class GroupFit:
    """One group, solved: where its replicas run and the plan of each."""

    entry: GroupEntry
    gpu: str  # the GPU kind's key, or "cpu"
    gpu_sets: tuple[GpuSet, ...]  # GPU sets, or CPU cores (one per replica)
    plan: FitPlan
    price_per_hour: float | None
    shared_with: tuple[str, ...] = ()  # the other groups on the same GPUs

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def cpu(self) -> bool:
        return self.gpu == CPU


def fit_request(entry: GroupEntry) -> FitRequest:
    fields: dict[str, Any] = {}
    if entry.ttft_target is not None:
        fields["ttft_target_s"] = entry.ttft_target
    return FitRequest(
        quant=entry.quant,
        tensor_parallel=entry.tp,
        context=entry.context,
        concurrency=entry.concurrency,
        lora=entry.lora_settings,
        **fields,
    )


def _sets(entry: GroupEntry, cpu: bool) -> tuple[GpuSet, ...]:
    if cpu and not entry.gpus:
        return tuple(GpuSet((str(index),)) for index in range(entry.replicas or 1))
    return tuple(split_gpu_sets(list(entry.gpus), tensor_parallel=entry.tp))


def _shares(
    file: DeploymentFile, sets: dict[str, tuple[GpuSet, ...]], models: dict[str, ModelSpec]
) -> dict[str, tuple[float, tuple[str, ...]]]:
    """Each sharing group's memory share and its neighbours; a GPU claimed twice otherwise
    than by identical sets of one GPU kind is refused."""
    by_gpu: dict[str, list[GroupEntry]] = {}
    for entry in file.groups:
        if file.gpu_of(entry) == CPU:
            continue
        for gpu_set in sets[entry.name]:
            for gpu_id in gpu_set.ids:
                by_gpu.setdefault(gpu_id, []).append(entry)
    shares: dict[str, tuple[float, tuple[str, ...]]] = {}
    for gpu_id, entries in by_gpu.items():
        if len(entries) < 2 or all(e.name in shares for e in entries):
            continue
        names = [e.name for e in entries]
        kinds = {normalize_gpu_name(file.gpu_of(e) or "") for e in entries}
        if len(kinds) > 1 or len({sets[name] for name in names}) > 1:
            raise GpuShareError(
                f"GPU {gpu_id} is claimed by {' and '.join(names)} with different GPU sets or "
                "kinds: groups that share GPUs list the same ones, of one kind"
            )
        gpu = get_gpu(file.gpu_of(entries[0]) or "")
        claims = [ShareClaim(e.name, models[e.name], fit_request(e)) for e in entries]
        for name, share in share_gpu(claims, gpu).items():
            shares[name] = (share, tuple(other for other in names if other != name))
    return shares


def fit_groups(file: DeploymentFile, *, share: bool = True) -> list[GroupFit]:
    """Every group's plan, on its share of its GPUs; refuses what does not fit. Without
    ``share`` (Kubernetes: each pod is given whole GPUs) every group has its GPUs alone."""
    models = {entry.name: load_model(entry.model) for entry in file.groups}
    sets = {entry.name: _sets(entry, file.gpu_of(entry) == CPU) for entry in file.groups}
    shares = _shares(file, sets, models) if share else {}
    fits: list[GroupFit] = []
    for entry in file.groups:
        kind = file.gpu_of(entry) or ""
        request = fit_request(entry)
        target: GpuProfile | CpuTarget
        if kind == CPU:
            if entry.tp != 1:
                raise InvalidInput(f"group {entry.name!r}: the CPU engine runs tp 1")
            target, key, price = CpuTarget(kv_cache_space_gib=CPU_KV_CACHE_GIB), CPU, None
        else:
            target = get_gpu(kind)
            served_checkpoint(entry.model, entry.quant)  # none known: how to make one
            key, price = normalize_gpu_name(kind), target.price_per_hour
        memory_share, neighbours = shares.get(entry.name, (None, ()))
        if memory_share is not None:
            request = request.model_copy(update={"gpu_memory_utilization": memory_share})
        plan = plan_fit(request, target, models[entry.name])
        if not plan.fits:
            where = f" beside {' and '.join(neighbours)}" if neighbours else ""
            raise InvalidInput(
                f"group {entry.name!r}: {plan.model} does not fit on {plan.target}{where}: "
                + "; ".join(plan.problems)
            )
        if entry.ttft_target is not None:  # the default's caps are left out where unmet
            try:
                check_plan_ttft(plan)
            except InvalidInput as exc:
                raise type(exc)(f"group {entry.name!r}: {exc}") from None
        fits.append(GroupFit(entry, key, sets[entry.name], plan, price, neighbours))
    return fits


def group_launch(
    fit: GroupFit, model: str, *, host: str, shutdown_timeout: float
) -> LaunchSettings:
    """What each replica of ``fit``'s group runs with ``vkit launch`` (port aside): ``model``
    under the group's served name, the fit's context and, on a GPU, the group's kind,
    quantization, tensor-parallel size and memory share; its LoRA settings and its
    time-to-first-token target (``vkit launch`` sizes the queue caps from it)."""
    fields: dict[str, Any] = {
        "model": model,
        "host": host,
        "served_model_name": fit.name,
        "shutdown_timeout": shutdown_timeout,
        "max_model_len": fit.plan.max_model_len,
    }
    if fit.cpu:
        fields.update(cpu=True, enforce_eager=True)
    else:
        fields.update(gpu=fit.gpu, quant=fit.entry.quant, tensor_parallel=fit.entry.tp)
        if fit.plan.gpu_memory_utilization is not None:
            fields["gpu_memory_utilization"] = fit.plan.gpu_memory_utilization
    if fit.entry.lora_settings is not None:
        fields["lora"] = fit.entry.lora_settings
    if fit.entry.ttft_target is not None:
        fields["ttft_target"] = fit.entry.ttft_target
    return LaunchSettings(**fields)
