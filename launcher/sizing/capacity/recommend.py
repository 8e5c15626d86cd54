"""The recommendation: the cheapest way to serve the traffic, and where that changes.

The guide's tiers (docs/gpus-and-costs.md#rules-of-thumb) come out of the costs rather than being
typed in: serverless while its bill is below the cheapest dedicated fleet (under ~1,000 DAU at the
guide's numbers: it has no idle cost), then one GPU (a single RTX 4090 for a 7B model to
~10,000 DAU), then several behind a load balancer. The crossover is the smallest DAU at which
serverless costs at least as much as a dedicated fleet, and the busy share there is the
"utilization above which self-managed wins". With the calibrated serverless rate
($1.20 per GPU-hour, see ``costs``) that is 0.39 / 1.20 = 33% for an RTX 4090, near the
guide's "self-managed wins above ~40-50% utilization" (the guide names no serverless price).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from launcher.sizing.capacity.costs import gpus_needed, monthly_cost, serverless_monthly_cost
from launcher.sizing.capacity.options import CapacityRequest, GpuOptionPlan, ServerlessPlan
from launcher.sizing.capacity.usage import (
    HOURS_PER_MONTH,
    SECONDS_PER_HOUR,
    UsageProfile,
    busy_seconds_per_month,
    peak_concurrency,
)

_MAX_FLEET = 100_000


class Recommendation(BaseModel):
    choice: str = Field(description="'serverless' or 'Nx GPU'")
    reason: str
    crossover_users: int | None = Field(description="DAU where dedicated overtakes serverless")
    crossover_option: str | None
    crossover_busy_share: float | None = Field(description="GPU busy share at the crossover")


def crossover_users(
    usage: UsageProfile, option: GpuOptionPlan, spares: int, usd_per_gpu_second: float
) -> int | None:
    """Smallest DAU at which serverless costs at least as much as ``option``'s fleet.

    Both costs grow with DAU: serverless linearly, the fleet by steps of one GPU. For a fleet
    of ``n`` GPUs (plus spares) the serverless bill reaches its cost at
    ``(n + spares) x monthly / serverless-per-user``; that is the crossover if ``n`` GPUs still
    carry that many users. None when serverless stays cheaper at any size.
    """
    per_replica = option.users_per_replica or option.users_per_gpu
    if per_replica <= 0:
        return None
    one_user = usage.model_copy(update={"daily_users": 1})
    serverless_per_user = serverless_monthly_cost(one_user, usd_per_gpu_second)
    peak_per_user = peak_concurrency(one_user)
    replica_month = monthly_cost(option.usd_per_hour) * option.tensor_parallel
    if replica_month * peak_per_user / per_replica > serverless_per_user:
        return None  # even a fully loaded fleet costs more per user than serverless
    for needed in range(1, _MAX_FLEET):
        users = (needed + spares) * replica_month / serverless_per_user
        if users <= needed * per_replica / peak_per_user:
            return math.ceil(users - 1e-9)  # 1872.0000001 is 1872
    return None


def busy_share(usage: UsageProfile, gpus: int) -> float:
    """Request-seconds over GPU-seconds of a fleet of ``gpus`` (no batching credit)."""
    return busy_seconds_per_month(usage) / (gpus * HOURS_PER_MONTH * SECONDS_PER_HOUR)


def _crossover(
    request: CapacityRequest, serving: list[GpuOptionPlan]
) -> tuple[int | None, str | None, float | None]:
    """The earliest crossover over ``serving`` options: DAU, option, busy share there."""
    rate = request.serverless_usd_per_gpu_second
    points: list[tuple[int, GpuOptionPlan]] = []
    for option in serving:
        users = crossover_users(request.usage, option, request.spares, rate)
        if users is not None:
            points.append((users, option))
    if not points:
        return None, None, None
    users, option = min(points, key=lambda point: point[0])
    usage = request.usage.model_copy(update={"daily_users": users})
    per_replica = option.users_per_replica or option.users_per_gpu
    replicas = gpus_needed(peak_concurrency(usage), per_replica, request.spares)
    name = option.fleet(request.quant).split(" ", 1)[1]  # without the count
    return users, name, busy_share(usage, replicas * option.tensor_parallel)


def _dedicated_reason(request: CapacityRequest, best: GpuOptionPlan, serverless: float) -> str:
    assert best.gpus is not None and best.monthly_usd is not None
    peak = peak_concurrency(request.usage)
    per = (
        f"{best.users_per_replica} per TP{best.tensor_parallel} replica"
        if best.tensor_parallel > 1
        else f"{best.users_per_gpu} per GPU"
    )
    reason = (
        f"peak ~{peak:.2g} concurrent users, {per} at "
        f">= {request.usage.user_tok_s:g} tok/s: ${best.monthly_usd:,.0f}/month "
        f"(${best.usd_per_user or 0:.2f}/user) vs serverless ${serverless:,.0f}"
    )
    if best.gpus > 1:
        reason += f"; {best.gpus} GPUs behind a load balancer"
    if request.spares == 0:
        reason += "; add --redundancy 1 for a spare replica behind a load balancer"
    return reason


def recommend(
    request: CapacityRequest, options: list[GpuOptionPlan], serverless: ServerlessPlan
) -> Recommendation:
    """Serverless or the cheapest dedicated fleet, with the reason in one line."""
    serving = [option for option in options if option.monthly_usd is not None]
    users, label, share = _crossover(request, serving)

    def made(choice: str, reason: str) -> Recommendation:
        return Recommendation(
            choice=choice,
            reason=reason,
            crossover_users=users,
            crossover_option=label,
            crossover_busy_share=share,
        )

    if not serving:
        notes = "; ".join(f"{o.label}: {o.limited_by}" for o in options) or "no GPU options given"
        if len(request.quantizations) == 1 and request.tensor_parallel == (1,):
            notes += "; search more with --tensor-parallel 1,2,4,8 and --allow-quant fp8,int4"
        reason = f"{request.model} ({request.quant}) runs on none of the GPUs considered ({notes})"
        return made("serverless", reason)
    best = min(serving, key=lambda o: (o.monthly_usd or 0.0, o.gpus or 0))
    assert best.monthly_usd is not None
    if serverless.monthly_usd < best.monthly_usd:
        reason = (
            f"serverless ${serverless.monthly_usd:,.0f}/month costs less than the cheapest "
            f"dedicated option ({best.label}, ${best.monthly_usd:,.0f}): no idle GPU to pay for"
        )
        if users is not None:
            reason += f" below ~{users:,} DAU"
        return made("serverless", reason)
    return made(best.fleet(request.quant), _dedicated_reason(request, best, serverless.monthly_usd))
