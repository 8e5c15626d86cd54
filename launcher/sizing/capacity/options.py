"""One option at a time: a priced GPU (or serverless) costed for one request.

The request is the planner's whole input: the traffic (:class:`UsageProfile`), the model and
its quantization, spare GPUs for redundancy and the serverless provider it is compared with.
"""

from __future__ import annotations

from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from launcher.sizing.capacity.costs import (
    SERVERLESS_USD_PER_GPU_SECOND,
    PricedGpu,
    breakeven_busy_share,
    gpus_needed,
    monthly_cost,
)
from launcher.sizing.capacity.throughput import DecodeCalibration, GpuThroughput, gpu_throughput
from launcher.sizing.capacity.usage import UsageProfile, peak_concurrency
from launcher.sizing.gpus import GpuProfile
from launcher.sizing.memory import Quantization
from launcher.sizing.models import ModelSpec

TensorParallel = Literal[1, 2, 4, 8]


class CapacityRequest(BaseModel):
    """What to plan for: the traffic, the model and quantization, spares, serverless price.

    ``quant`` is the baseline precision; ``allow_quant`` adds the quantizations the search
    may also use, and ``tensor_parallel`` the replica sizes it tries (default: the baseline on
    one GPU, as the cost guide plans). ``context``: the max_model_len the service must offer
    (default: what the workload needs). ``eager``: every replica, dedicated or serverless, runs
    vLLM with --enforce-eager, and each step pays for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usage: UsageProfile
    model: str = "7b"
    quant: Quantization = "fp16"
    allow_quant: tuple[Quantization, ...] = ()
    tensor_parallel: tuple[TensorParallel, ...] = Field(default=(1,), min_length=1)
    context: int | None = Field(default=None, ge=16)
    eager: bool = Field(
        default=False, description="replicas run with --enforce-eager (no CUDA graphs)"
    )
    spares: int = Field(default=0, ge=0, le=8, description="extra replicas for redundancy (N+1: 1)")
    serverless: str = Field(default="runpod", description="serverless provider priced against")
    serverless_usd_per_gpu_second: float | None = Field(
        default=None, gt=0, description="overrides every serverless class's $/GPU-second"
    )

    @property
    def quantizations(self) -> tuple[Quantization, ...]:
        """The baseline first, then the allowed ones, each once."""
        return tuple(dict.fromkeys((self.quant, *self.allow_quant)))


class Rejected(BaseModel):
    """A configuration of a GPU that lost to the winner: ``reason`` is a limit
    (``does-not-fit``, ``too-slow``, ``no-checkpoint``, ...) or ``costs-more``/``same-cost``."""

    config: str
    reason: str
    detail: str = ""
    monthly_usd: float | None = None


class GpuOptionPlan(BaseModel):
    """One priced GPU in one configuration (quantization, TP): what a replica sustains, how
    many GPUs are needed, what they cost. ``rejected``: the other configurations of this GPU
    and why each lost (filled by the search)."""

    label: str
    gpu: str
    gpu_key: str = ""
    provider: str
    usd_per_hour: float
    quant: str = "fp16"
    tensor_parallel: int = 1
    users_per_replica: int = 0
    users_per_gpu: int = Field(description="users per replica // tensor_parallel")
    per_user_tok_s: float
    gpu_tok_s: float
    kv_tokens: int
    limited_by: str
    note: str = ""
    gpus: int | None = Field(description="None when the model does not run on this GPU")
    gpus_pessimistic: int | None = Field(
        default=None,
        description="GPUs needed were the speed model as far too fast as its held-out error "
        "band's pessimistic end (launcher.sizing.speed_band); None: nothing serves there",
    )
    monthly_usd: float | None
    usd_per_user: float | None
    utilization: float | None = Field(description="peak concurrency / the fleet's user capacity")
    breakeven_busy_share: float = Field(description="busy share where it beats serverless")
    checkpoint: str | None = None
    rejected: list[Rejected] = Field(default_factory=list)

    def configuration(self, baseline: str) -> str:
        """``TP2 fp8``; empty for the baseline precision on one GPU."""
        parts = [f"TP{self.tensor_parallel}"] if self.tensor_parallel > 1 else []
        if self.quant != baseline:
            parts.append(self.quant)
        return " ".join(parts)

    def fleet(self, baseline: str) -> str:
        """``2x h100-sxm TP2 fp8``: what to rent (None-safe: ``-`` when it cannot serve)."""
        if self.gpus is None:
            return "-"
        return " ".join(
            p for p in (f"{self.gpus}x {self.label}", self.configuration(baseline)) if p
        )


class ServerlessPlan(BaseModel):
    """The serverless worker that serves the model, and its month (``serverless.py``);
    ``worker`` None (and ``monthly_usd`` None) when no worker class of the provider serves."""

    provider: str
    source: str = ""
    worker: str | None = None
    gpu_key: str = ""
    gpus_per_worker: int = 1
    quant: str = ""
    usd_per_gpu_second: float = 0.0
    seconds_per_request: float = 0.0
    cold_start_s: float = 0.0
    idle_timeout_s: float = 0.0
    busy_gpu_seconds: float = Field(default=0.0, description="billed GPU-seconds a month")
    monthly_usd: float | None = None
    usd_per_user: float | None = None
    note: str = ""


def request_throughput(
    request: CapacityRequest,
    gpu: GpuProfile,
    model: ModelSpec,
    quant: Quantization,
    tensor_parallel: int,
    calibration: DecodeCalibration | None = None,
    slowdown: float = 1.0,
) -> GpuThroughput:
    """What one replica of ``tensor_parallel`` ``gpu``s sustains for ``request``'s workload;
    ``slowdown`` > 1: were every step that much slower than the speed model says."""
    usage = request.usage
    return gpu_throughput(
        gpu,
        model,
        quant,
        target_tok_s=usage.user_tok_s * slowdown,
        prompt_tokens=usage.prompt_tokens,
        output_tokens=usage.tokens_per_request,
        tensor_parallel=tensor_parallel,
        context=request.context,
        calibration=calibration,
        eager=request.eager,
    )


def pessimistic_gpus(
    option: GpuOptionPlan,
    gpu: GpuProfile,
    model: ModelSpec,
    request: CapacityRequest,
    slowdown: float,
    calibration: DecodeCalibration | None = None,
) -> int | None:
    """GPUs ``option``'s quantization needs were each step ``slowdown`` x slower: a replica
    then carries only the users it would serve at ``slowdown`` x the per-user speed; a wider
    tensor-parallel split (of those searched) counts when the option's own is then too slow."""
    if option.gpus is None:
        return None
    quant = cast(Quantization, option.quant)
    counts = []
    for tp in sorted({t for t in request.tensor_parallel if t >= option.tensor_parallel}):
        speed = request_throughput(request, gpu, model, quant, tp, calibration, slowdown)
        if speed.users > 0:
            counts.append(
                gpus_needed(peak_concurrency(request.usage), speed.users, request.spares) * tp
            )
    return min(counts, default=None)


def plan_option(
    option: PricedGpu,
    model: ModelSpec,
    request: CapacityRequest,
    calibration: DecodeCalibration | None = None,
    quant: Quantization | None = None,
    tensor_parallel: int = 1,
) -> GpuOptionPlan:
    """Throughput, GPU count and cost of one priced GPU for ``request``, in one configuration
    (default: the baseline precision on one GPU). Redundancy adds whole replicas."""
    usage = request.usage
    quant = quant or request.quant
    speed = request_throughput(request, option.gpu, model, quant, tensor_parallel, calibration)
    count = monthly = per_user = utilization = None
    if speed.users > 0:
        peak = peak_concurrency(usage)
        count = gpus_needed(peak, speed.users, request.spares) * tensor_parallel
        monthly = count * monthly_cost(option.usd_per_hour)
        per_user = monthly / usage.daily_users
        utilization = peak / (count // tensor_parallel * speed.users)
    return GpuOptionPlan(
        label=option.label,
        gpu=option.gpu.name,
        gpu_key=option.gpu.key,
        provider=option.provider,
        usd_per_hour=option.usd_per_hour,
        quant=quant,
        tensor_parallel=tensor_parallel,
        users_per_replica=speed.users,
        users_per_gpu=speed.users // tensor_parallel,
        per_user_tok_s=round(speed.per_user_tok_s, 1),
        gpu_tok_s=round(speed.total_tok_s / tensor_parallel, 1),
        kv_tokens=speed.kv_tokens,
        limited_by=speed.limited_by,
        note=speed.note,
        gpus=count,
        monthly_usd=monthly,
        usd_per_user=per_user,
        utilization=utilization,
        breakeven_busy_share=breakeven_busy_share(
            option.usd_per_hour,
            request.serverless_usd_per_gpu_second or SERVERLESS_USD_PER_GPU_SECOND,
        ),
    )
