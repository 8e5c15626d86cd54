"""One option at a time: a priced GPU (or serverless) costed for one request.

The request is the planner's whole input: the traffic (:class:`UsageProfile`), the model and
its quantization, spare GPUs for redundancy and the serverless price per GPU-second.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from launcher.sizing.capacity.costs import (
    SERVERLESS_USD_PER_GPU_SECOND,
    PricedGpu,
    breakeven_busy_share,
    gpus_needed,
    monthly_cost,
    serverless_monthly_cost,
)
from launcher.sizing.capacity.throughput import DecodeCalibration, gpu_throughput
from launcher.sizing.capacity.usage import (
    UsageProfile,
    busy_seconds_per_month,
    context_tokens,
    peak_concurrency,
)
from launcher.sizing.memory import Quantization
from launcher.sizing.models import ModelSpec


class CapacityRequest(BaseModel):
    """What to plan for: the traffic, the model and quantization, spares, serverless price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usage: UsageProfile
    model: str = "7b"
    quant: Quantization = "fp16"
    spares: int = Field(default=0, ge=0, le=8, description="extra GPUs for redundancy (N+1: 1)")
    serverless_usd_per_gpu_second: float = Field(default=SERVERLESS_USD_PER_GPU_SECOND, gt=0)


class GpuOptionPlan(BaseModel):
    """One priced GPU: what it sustains, how many are needed, what they cost."""

    label: str
    gpu: str
    provider: str
    usd_per_hour: float
    users_per_gpu: int
    per_user_tok_s: float
    gpu_tok_s: float
    kv_tokens: int
    limited_by: str
    note: str = ""
    gpus: int | None = Field(description="None when the model does not run on this GPU")
    monthly_usd: float | None
    usd_per_user: float | None
    utilization: float | None = Field(description="peak concurrency / the fleet's user capacity")
    breakeven_busy_share: float = Field(description="busy share where it beats serverless")


class ServerlessPlan(BaseModel):
    usd_per_gpu_second: float
    busy_gpu_seconds: float
    monthly_usd: float
    usd_per_user: float


def plan_option(
    option: PricedGpu,
    model: ModelSpec,
    request: CapacityRequest,
    calibration: DecodeCalibration | None = None,
) -> GpuOptionPlan:
    """Throughput, GPU count and cost of one priced GPU for ``request``."""
    usage = request.usage
    speed = gpu_throughput(
        option.gpu,
        model,
        request.quant,
        target_tok_s=usage.user_tok_s,
        context_tokens=context_tokens(usage),
        calibration=calibration,
    )
    count = monthly = per_user = utilization = None
    if speed.users > 0:
        peak = peak_concurrency(usage)
        count = gpus_needed(peak, speed.users, request.spares)
        monthly = count * monthly_cost(option.usd_per_hour)
        per_user = monthly / usage.daily_users
        utilization = peak / (count * speed.users)
    return GpuOptionPlan(
        label=option.label,
        gpu=option.gpu.name,
        provider=option.provider,
        usd_per_hour=option.usd_per_hour,
        users_per_gpu=speed.users,
        per_user_tok_s=round(speed.per_user_tok_s, 1),
        gpu_tok_s=round(speed.total_tok_s, 1),
        kv_tokens=speed.kv_tokens,
        limited_by=speed.limited_by,
        note=speed.note,
        gpus=count,
        monthly_usd=monthly,
        usd_per_user=per_user,
        utilization=utilization,
        breakeven_busy_share=breakeven_busy_share(
            option.usd_per_hour, request.serverless_usd_per_gpu_second
        ),
    )


def plan_serverless(request: CapacityRequest) -> ServerlessPlan:
    rate = request.serverless_usd_per_gpu_second
    monthly = serverless_monthly_cost(request.usage, rate)
    return ServerlessPlan(
        usd_per_gpu_second=rate,
        busy_gpu_seconds=busy_seconds_per_month(request.usage),
        monthly_usd=monthly,
        usd_per_user=monthly / request.usage.daily_users,
    )
