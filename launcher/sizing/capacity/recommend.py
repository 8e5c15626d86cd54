"""The recommendation: the cheapest way to serve the traffic, and where that changes.

The guide's tiers (docs/gpus-and-costs.md#rules-of-thumb) come out of the costs rather than being
typed in: serverless while its bill is below the cheapest dedicated fleet (under ~1,000 DAU at the
guide's numbers: it has no idle cost), then one GPU (a single RTX 4090 for a 7B model to
~10,000 DAU), then several behind a load balancer. The crossover is the smallest DAU at which
serverless costs at least as much as a dedicated fleet, and the busy share there is the
"utilization above which self-managed wins". At the guide's own serverless terms
(the ``cost-guide`` provider: $1.20 per GPU-hour, see ``costs``) that is 0.39 / 1.20 = 33% for
an RTX 4090, near the guide's "self-managed wins above ~40-50% utilization". Serverless is
the worker ``serverless.py`` prices for the model (its GPU class, its speed, its cold starts),
so a 70B is compared with a 70B-sized worker. A serverless recommendation names the command
that writes that worker's endpoint settings and the gateway's spill-over to it
(:func:`serverless_command`, docs/serverless.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import BaseModel, Field

from launcher.sizing.capacity.costs import gpus_needed, monthly_cost
from launcher.sizing.capacity.options import CapacityRequest, GpuOptionPlan, ServerlessPlan
from launcher.sizing.capacity.serverless import serverless_monthly_usd
from launcher.sizing.capacity.usage import (
    HOURS_PER_MONTH,
    SECONDS_PER_HOUR,
    UsageProfile,
    peak_concurrency,
)

_MAX_USERS = 10_000_000


class Recommendation(BaseModel):
    choice: str = Field(description="'serverless', 'Nx GPU', or 'none' when nothing serves")
    reason: str
    crossover_users: int | None = Field(description="DAU where dedicated overtakes serverless")
    crossover_option: str | None
    crossover_busy_share: float | None = Field(description="GPU busy share at the crossover")


def crossover_users(
    usage: UsageProfile,
    option: GpuOptionPlan,
    spares: int,
    serverless: Callable[[UsageProfile], float | None],
) -> int | None:
    """Smallest DAU at which serverless costs at least as much as ``option``'s fleet.

    ``serverless``: the month's serverless bill for a traffic (it need not grow linearly: cold
    starts fade as traffic keeps a worker warm). The fleet grows by steps of one replica. The
    DAU axis is walked in steps of 2% from 1 to 10 million and the first crossing is refined by
    bisection. None when serverless stays cheaper (or when no serverless worker serves).
    """
    per_replica = option.users_per_replica or option.users_per_gpu
    if per_replica <= 0:
        return None
    peak_per_user = peak_concurrency(usage.model_copy(update={"daily_users": 1}))
    replica_month = monthly_cost(option.usd_per_hour) * option.tensor_parallel

    def gap(users: int) -> float:
        at = usage.model_copy(update={"daily_users": users})
        bill = serverless(at)
        if bill is None:
            return -math.inf
        fleet = gpus_needed(users * peak_per_user, per_replica, spares) * replica_month
        return bill - fleet

    low, users = 0, 1
    while users <= _MAX_USERS:
        if gap(users) >= 0:
            while users - low > 1:  # gap(low) < 0 <= gap(users)
                middle = (low + users) // 2
                if gap(middle) >= 0:
                    users = middle
                else:
                    low = middle
            return users
        low, users = users, max(users + 1, int(users * 1.02))
    return None


def busy_share(usage: UsageProfile, serverless: ServerlessPlan, gpus: int) -> float:
    """Serverless GPU-seconds billed for ``usage`` over GPU-seconds of a fleet of ``gpus``."""
    at = serverless_monthly_usd(serverless, usage) or 0.0
    billed = at / serverless.usd_per_gpu_second if serverless.usd_per_gpu_second else 0.0
    return billed / (gpus * HOURS_PER_MONTH * SECONDS_PER_HOUR)


def _crossover(
    request: CapacityRequest, serving: list[GpuOptionPlan], serverless: ServerlessPlan
) -> tuple[int | None, str | None, float | None]:
    """The earliest crossover over ``serving`` options: DAU, option, busy share there."""
    if serverless.worker is None:
        return None, None, None

    def bill(usage: UsageProfile) -> float | None:
        return serverless_monthly_usd(serverless, usage)

    points: list[tuple[int, GpuOptionPlan]] = []
    for option in serving:
        users = crossover_users(request.usage, option, request.spares, bill)
        if users is not None:
            points.append((users, option))
    if not points:
        return None, None, None
    users, option = min(points, key=lambda point: point[0])
    usage = request.usage.model_copy(update={"daily_users": users})
    per_replica = option.users_per_replica or option.users_per_gpu
    replicas = gpus_needed(peak_concurrency(usage), per_replica, request.spares)
    name = option.fleet(request.quant).split(" ", 1)[1]  # without the count
    return users, name, busy_share(usage, serverless, replicas * option.tensor_parallel)


def describe_worker(serverless: ServerlessPlan) -> str:
    """``runpod 2x 80 GB PRO (H100) fp8``; why none serves when no worker does."""
    if serverless.worker is None:
        return serverless.note or f"no {serverless.provider} worker serves it"
    count = f"{serverless.gpus_per_worker}x " if serverless.gpus_per_worker > 1 else ""
    return f"{serverless.provider} {count}{serverless.worker} {serverless.quant}".rstrip()


def serverless_command(model: str, serverless: ServerlessPlan) -> str:
    """``vkit render serverless ...`` for the worker ``serverless`` prices (its GPU class,
    its GPUs, its precision)."""
    words = ["vkit render serverless", f"--model {model}", f"--gpu {serverless.gpu_key}"]
    if serverless.quant:
        words.append(f"--quant {serverless.quant}")
    if serverless.gpus_per_worker > 1:
        words.append(f"--tp {serverless.gpus_per_worker}")
    return " ".join(words)


def _pointer(model: str, serverless: ServerlessPlan) -> str:
    return f"; '{serverless_command(model, serverless)}' writes its endpoint"


def _dedicated_reason(
    request: CapacityRequest, best: GpuOptionPlan, serverless: ServerlessPlan
) -> str:
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
        f"(${best.usd_per_user or 0:.2f}/user) vs "
        + (
            f"serverless ${serverless.monthly_usd:,.0f} ({describe_worker(serverless)})"
            if serverless.monthly_usd is not None
            else f"no serverless worker ({describe_worker(serverless)})"
        )
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
    users, label, share = _crossover(request, serving, serverless)

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
        if serverless.worker is None:
            return made("none", f"{reason}; {describe_worker(serverless)}")
        reason += f"; serverless: {describe_worker(serverless)}"
        return made("serverless", reason + _pointer(request.model, serverless))
    best = min(serving, key=lambda o: (o.monthly_usd or 0.0, o.gpus or 0))
    assert best.monthly_usd is not None
    if serverless.monthly_usd is not None and serverless.monthly_usd < best.monthly_usd:
        reason = (
            f"serverless ${serverless.monthly_usd:,.0f}/month ({describe_worker(serverless)}) "
            f"costs less than the cheapest dedicated option ({best.label}, "
            f"${best.monthly_usd:,.0f}): no idle GPU to pay for"
        )
        if users is not None:
            reason += f" below ~{users:,} DAU"
        return made("serverless", reason + _pointer(request.model, serverless))
    return made(best.fleet(request.quant), _dedicated_reason(request, best, serverless))
