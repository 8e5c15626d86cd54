"""From ``vkit render k8s`` arguments to a :class:`K8sSpec` and the fit solver's plan.

    >>> spec, plan, price = plan_k8s(K8sArgs(gpu="h200", model="llama-3.1-70b", quant="fp8"))
    >>> spec.overlay_name, spec.hf_model, plan.tensor_parallel, price
    ('h200-llama-3.1-70b-fp8', 'neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8', 1, 1.84)

The per-replica target of the autoscaler comes from the capacity planner (users one GPU
serves at its per-user speed; a tensor-parallel replica counts its GPUs), unless
``--scale-target`` gives one. The fit solver then sizes vLLM for that many concurrent
requests (unless ``--concurrency`` or ``--context`` says otherwise), so that a replica
running its target has the KV cache for it.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from launcher.sizing.fit import CpuTarget, FitPlan, FitRequest, plan_fit
from launcher.sizing.gpus import get_gpu, normalize_gpu_name
from launcher.sizing.memory import Quantization
from launcher.sizing.models import load_model
from launcher.supervision.launch_spec import loaded_checkpoint
from vkit.deployment.drain import GATEWAY_TOTAL_TIMEOUT_S
from vkit.exit_codes import CliError
from vkit.render.k8s_autoscaling import scale_target
from vkit.render.k8s_ledger import LedgerChoice
from vkit.render.k8s_spec import DEFAULT_PROMETHEUS_URL, Autoscaler, K8sSpec, gpu_product_label
from vkit.render.k8s_vllm import TINY_MODEL_DIR

CPU_KV_CACHE_GIB = 1


class K8sArgs(BaseModel):
    """``vkit render k8s`` arguments, typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str
    model: str
    quant: Quantization = "bf16"
    tp: int = Field(default=1, ge=1, le=8)
    hf_model: str | None = None
    concurrency: int | None = Field(default=None, ge=1)
    context: int | None = Field(default=None, ge=16)
    shutdown_timeout: int = Field(default=GATEWAY_TOTAL_TIMEOUT_S, ge=1)
    autoscaler: Autoscaler = "keda"
    routing: Literal["round_robin", "aware"] = "aware"
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    scale_target: int | None = Field(default=None, ge=1)
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    no_monitoring: bool = False
    ledger: LedgerChoice = "off"
    out: Path | None = None

    @model_validator(mode="after")
    def _replicas(self) -> K8sArgs:
        low = self.min_replicas
        if self.autoscaler == "zero" and low not in (None, 0):
            raise ValueError("--autoscaler zero scales to 0 replicas: drop --min-replicas")
        if self.autoscaler == "hpa" and low == 0:
            raise ValueError("an HPA keeps at least one replica: use --autoscaler zero (KEDA)")
        if low is not None and low > self.max_replicas:
            raise ValueError("--min-replicas is above --max-replicas")
        return self

    @property
    def cpu(self) -> bool:
        return self.gpu.lower() == "cpu"


def checkpoint_for_args(args: K8sArgs) -> tuple[str, Quantization]:
    """What vLLM loads, and the quantization it applies at load: the launcher's
    :func:`~launcher.supervision.launch_spec.loaded_checkpoint` of ``--hf-model`` or the
    model (the tiny CPU model: its directory, built in the pod)."""
    if args.cpu and args.model == "tiny-llama" and not args.hf_model:
        return TINY_MODEL_DIR, args.quant
    return loaded_checkpoint(args.hf_model or args.model, args.quant)


def plan_k8s(args: K8sArgs) -> tuple[K8sSpec, FitPlan, float | None]:
    """The deployment, its fit plan, and the GPU's hourly price (None: no price known)."""
    model = load_model(args.model)
    min_replicas = args.min_replicas
    if min_replicas is None:
        min_replicas = 0 if args.autoscaler == "zero" else 1
    if args.cpu:
        target = args.scale_target or 1
        request = FitRequest(quant=args.quant, context=args.context, concurrency=args.concurrency)
        plan = plan_fit(request, CpuTarget(kv_cache_space_gib=CPU_KV_CACHE_GIB), model)
        gpu_key, product, price = "cpu", None, None
    else:
        gpu = get_gpu(args.gpu)
        gpu_key = normalize_gpu_name(args.gpu)
        target = args.scale_target or scale_target(gpu_key, model.name, args.quant) * args.tp
        if target == 0:
            raise CliError(
                f"the capacity planner finds no concurrency at which {model.name} ({args.quant}) "
                f"on one {gpu.name} reaches its per-user speed: give --scale-target N"
            )
        concurrency = args.concurrency if args.context else (args.concurrency or target)
        request = FitRequest(
            quant=args.quant, tensor_parallel=args.tp, context=args.context, concurrency=concurrency
        )
        plan = plan_fit(request, gpu, model)
        product, price = gpu_product_label(gpu.name), gpu.price_per_hour
    if not plan.fits:
        raise CliError(f"{model.name} does not fit on {plan.target}: {'; '.join(plan.problems)}")
    hf_model, vllm_quant = checkpoint_for_args(args)
    spec = K8sSpec(
        gpu=gpu_key,
        gpu_product=product,
        model=model.name,
        hf_model=hf_model,
        quant=args.quant,
        vllm_quant=vllm_quant,
        tensor_parallel=args.tp,
        shutdown_timeout_s=args.shutdown_timeout,
        autoscaler=args.autoscaler,
        routing=args.routing,
        min_replicas=min_replicas,
        max_replicas=args.max_replicas,
        scale_target=target,
        prometheus_url=args.prometheus_url,
        monitoring=not args.no_monitoring,
        ledger=args.ledger,
    )
    return spec, plan, price


def command_line(args: K8sArgs) -> str:
    """The command that reproduces this render (recorded in the overlay's headers)."""
    parts = ["vkit", "render", "k8s", "--gpu", args.gpu, "--model", args.model]
    defaults = K8sArgs(gpu=args.gpu, model=args.model)
    for field in K8sArgs.model_fields:
        if field in ("gpu", "model", "out", "no_monitoring"):
            continue
        value = getattr(args, field)
        if value is not None and value != getattr(defaults, field):
            parts += [f"--{field.replace('_', '-')}", str(value)]
    if args.no_monitoring:
        parts.append("--no-monitoring")
    return shlex.join(parts)
