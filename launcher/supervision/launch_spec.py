"""``vkit launch`` as a Python API: from typed settings to the vLLM command and environment.

    >>> spec = resolve_launch(LaunchSettings(model="llama-3.1-8b", gpu="rtx4090",
    ...                                      quant="awq", concurrency=16), gpu_visible=True)
    >>> spec.plan.max_model_len, spec.argv[3:5]
    (6144, ['--model', 'hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4'])

:func:`resolve_launch` is pure apart from reading model configs; :func:`build_vllm_argv`
(re-exported from :mod:`launcher.supervision.vllm_args`) renders the options. The process
itself is run by :class:`launcher.supervision.supervisor.EngineSupervisor`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from launcher.errors import LaunchError, UnknownModelError
from launcher.sizing.checkpoints import served_checkpoint
from launcher.sizing.fit import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    CpuTarget,
    FitPlan,
    FitRequest,
    check_plan_ttft,
    plan_fit,
)
from launcher.sizing.gpus import GpuProfile, get_gpu, load_gpus
from launcher.sizing.lora import LoraSettings, lora_env
from launcher.sizing.memory import Quantization
from launcher.sizing.models import KvDtype, ModelSpec, load_model, vllm_model_argument
from launcher.sizing.queue_caps import DEFAULT_TTFT_TARGET_S
from launcher.supervision.amx_site import SITE_DIR as AMX_SITE_DIR
from launcher.supervision.vllm_args import VllmOptions, build_vllm_argv

__all__ = [
    "LaunchSettings",
    "LaunchSpec",
    "build_vllm_argv",
    "engine_process_env",
    "loaded_checkpoint",
    "options_for",
    "plan_vllm_argv",
    "resolve_launch",
]


class LaunchSettings(BaseModel):
    """Everything ``vkit launch`` takes, from flags or a deployment profile (same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    gpu: str | None = None
    cpu: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    served_model_name: str | None = None
    max_model_len: int | None = Field(default=None, ge=16)
    concurrency: int | None = Field(default=None, ge=1)
    quant: Quantization = "bf16"
    kv_cache_dtype: KvDtype = "auto"
    tensor_parallel: int = Field(default=1, ge=1, le=8)
    gpu_memory_utilization: float = Field(default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1)
    enforce_eager: bool = False
    shutdown_timeout: int | None = Field(default=None, ge=0)
    kv_cache_space_gib: int = Field(default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE")
    max_restarts: int = Field(default=2, ge=0, le=10)
    ttft_target: float = Field(
        default=DEFAULT_TTFT_TARGET_S, gt=0, description="seconds: sizes vLLM's admission caps"
    )
    lora: LoraSettings | None = Field(default=None, description="LoRA adapters (no flag)")
    extra_args: tuple[str, ...] = ()

    @field_validator("shutdown_timeout", mode="before")
    @classmethod
    def _whole_seconds(cls, value: object) -> object:
        """vLLM takes whole seconds: 2.5 -> 3 (never drain for less than asked)."""
        if isinstance(value, float | str) and value != "":
            return math.ceil(float(value))
        return value


class LaunchSpec(BaseModel):
    """The resolved launch: options, the command line, the environment to add, the plan."""

    model_config = ConfigDict(frozen=True)

    options: VllmOptions
    argv: list[str]
    env: dict[str, str]
    plan: FitPlan | None
    cpu: bool
    notes: list[str] = Field(default_factory=list)


def choose_target(
    settings: LaunchSettings, *, gpu_visible: bool, detected_gpu: str | None = None
) -> GpuProfile | CpuTarget | None:
    """CPU with --cpu or when no GPU is visible; else --gpu, else the detected GPU's profile."""
    if settings.cpu or (not gpu_visible and settings.gpu is None):
        return CpuTarget(kv_cache_space_gib=settings.kv_cache_space_gib)
    if settings.gpu is not None:
        return get_gpu(settings.gpu)
    if detected_gpu:
        wanted = detected_gpu.lower().replace(" ", "")
        for gpu in load_gpus().values():
            if gpu.name.lower().replace(" ", "") in wanted:
                return gpu
    return None


def _model_spec(name: str) -> ModelSpec | None:
    try:
        return load_model(name)
    except UnknownModelError:
        if Path(name).expanduser().exists():
            raise
        return None  # a repository id we hold no config for: vLLM's defaults apply


def fit_request(settings: LaunchSettings) -> FitRequest:
    """The solver's request: --max-model-len is a context target, else --concurrency."""
    return FitRequest(
        quant=settings.quant,
        kv_dtype=settings.kv_cache_dtype,
        tensor_parallel=settings.tensor_parallel,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        context=settings.max_model_len,
        concurrency=None if settings.max_model_len else settings.concurrency,
        min_context=min(2048, settings.max_model_len or 2048),
        lora=settings.lora,
        eager=settings.enforce_eager,
        ttft_target_s=settings.ttft_target,
    )


def solve(
    settings: LaunchSettings,
    target: GpuProfile | CpuTarget,
    spec: ModelSpec,
    *,
    prompt_tokens: int = 500,
    output_tokens: int = 200,
) -> FitPlan:
    """The fit plan for the settings (larger GPUs offered as ways out); the workload
    (tokens per request) shapes the speed estimate and the admission caps. A TTFT target
    one prompt alone exceeds is refused (:func:`~launcher.sizing.fit.check_plan_ttft`)."""
    alternatives = tuple(load_gpus().values()) if isinstance(target, GpuProfile) else ()
    request = FitRequest.model_validate(
        {
            **fit_request(settings).model_dump(),
            "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens,
        }
    )
    plan = plan_fit(request, target, spec, alternatives)
    check_plan_ttft(plan)
    return plan


def plan_for(settings: LaunchSettings, target: GpuProfile | CpuTarget, spec: ModelSpec) -> FitPlan:
    """:func:`solve`, but a plan that does not fit is a :class:`LaunchError`."""
    plan = solve(settings, target, spec)
    if not plan.fits:
        ways = "; ".join(plan.ways_out)
        raise LaunchError(
            f"{spec.name} does not fit on {plan.target}: {'; '.join(plan.problems)}"
            + (f". Ways out: {ways}" if ways else "")
        )
    return plan


def loaded_checkpoint(model: str, quant: Quantization) -> tuple[str, Quantization]:
    """What vLLM loads for ``model`` at ``quant``, and the quantization it applies at load.

    A snapshot name becomes the catalog's checkpoint for the quantization (a
    :class:`~launcher.errors.NoCheckpointError` when none is known); a directory or a
    repository id is loaded as given. A pre-quantized checkpoint declares its own method in
    config.json, so vLLM quantizes nothing at load: ``bf16`` (no ``--quantization``). The one
    place this rule lives: ``vkit launch``, compose and Kubernetes all come here."""
    checkpoint = served_checkpoint(model, quant)
    if checkpoint is None:
        return vllm_model_argument(model), quant
    return checkpoint.repo, "bf16" if checkpoint.prequantized else quant


def options_for(
    settings: LaunchSettings, plan: FitPlan | None, *, cpu: bool, load: str | None = None
) -> VllmOptions:
    """vLLM options: the plan's sizes (max_model_len, max_num_seqs, GPU memory share, tensor
    parallel, KV dtype), the rest from the settings; without a plan, the settings' own.

    The checkpoint and the online quantization come from :func:`loaded_checkpoint`; ``load``
    replaces only what vLLM loads (a deploy file's ``${VLLM_MODEL}`` reference, a model
    directory), not the quantization rule."""
    model, online_quant = loaded_checkpoint(settings.model, settings.quant)
    if plan is None:
        memory = None if cpu else settings.gpu_memory_utilization
        tensor_parallel, kv_dtype = settings.tensor_parallel, settings.kv_cache_dtype
    else:
        memory, tensor_parallel, kv_dtype = (
            plan.gpu_memory_utilization,
            plan.tensor_parallel,
            plan.kv_dtype,
        )
    return VllmOptions(
        model=model if load is None else load,
        served_model_name=settings.served_model_name,
        host=settings.host,
        port=settings.port,
        max_model_len=plan.max_model_len if plan else settings.max_model_len,
        max_num_seqs=plan.max_num_seqs if plan else None,
        max_num_queued_reqs=plan.max_num_queued_reqs if plan else None,
        max_num_queued_tokens=plan.max_num_queued_tokens if plan else None,
        gpu_memory_utilization=memory,
        tensor_parallel=tensor_parallel,
        quant=online_quant,
        kv_cache_dtype=kv_dtype,
        enforce_eager=settings.enforce_eager,
        shutdown_timeout=settings.shutdown_timeout,
        lora=settings.lora,
        extra_args=settings.extra_args,
    )


def plan_vllm_argv(
    settings: LaunchSettings,
    plan: FitPlan | None,
    *,
    cpu: bool = False,
    load: str | None = None,
    engine: Sequence[str] | None = None,
) -> list[str]:
    """The vLLM command for a plan: :func:`options_for` rendered by :func:`build_vllm_argv`.
    ``vkit launch``, the compose file and the Kubernetes StatefulSet all build it here (a
    deploy file passes ``engine=[]``: its image's entrypoint runs the server)."""
    return build_vllm_argv(options_for(settings, plan, cpu=cpu, load=load), engine=engine)


def engine_env(settings: LaunchSettings, *, cpu: bool) -> dict[str, str]:
    """Variables to add for the engine. CPU: the KV budget, VLLM_CPU_KVCACHE_SPACE (GiB), and
    ``PYTHONPATH`` led by :mod:`launcher.supervision.amx_site`, whose ``sitecustomize`` asks
    Linux for AMX tile state in every engine process (vLLM's CPU worker dies without it on
    AMX CPUs, docs/cpu-engine.md#amx-cpus). LoRA with runtime updates: vLLM's switch for its
    load/unload endpoints."""
    if not cpu:
        return lora_env(settings.lora)
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_space_gib),
        "PYTHONPATH": str(AMX_SITE_DIR),
        **lora_env(settings.lora),
    }


def engine_process_env(base: Mapping[str, str], added: Mapping[str, str]) -> dict[str, str]:
    """The engine's whole environment: ``base`` (ours) with ``added`` on top, except that an
    added ``PYTHONPATH`` goes in front of the one ``base`` has instead of replacing it."""
    env = {**base, **added}
    theirs = base.get("PYTHONPATH")
    if "PYTHONPATH" in added and theirs:
        env["PYTHONPATH"] = added["PYTHONPATH"] + os.pathsep + theirs
    return env


def resolve_launch(
    settings: LaunchSettings,
    *,
    gpu_visible: bool,
    detected_gpu: str | None = None,
    engine: Sequence[str] | None = None,
) -> LaunchSpec:
    """Settings -> vLLM options, argv and environment, tuned by the fit solver when it can."""
    target = choose_target(settings, gpu_visible=gpu_visible, detected_gpu=detected_gpu)
    cpu = isinstance(target, CpuTarget)
    spec = _model_spec(settings.model)
    notes: list[str] = []
    plan = None
    if spec is not None and target is not None:
        plan = plan_for(settings, target, spec)
    elif spec is None:
        notes.append(f"no config.json known for {settings.model!r}: not tuned by the solver")
    else:
        notes.append("GPU not in configs/gpus.yaml (use --gpu NAME): not tuned by the solver")
    options = options_for(settings, plan, cpu=cpu)
    env = engine_env(settings, cpu=cpu)
    argv = plan_vllm_argv(settings, plan, cpu=cpu, engine=engine)
    return LaunchSpec(options=options, argv=argv, env=env, plan=plan, cpu=cpu, notes=notes)
