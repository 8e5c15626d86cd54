"""The capacity planner: usage + model + priced GPUs -> GPUs, dollars and a recommendation.

    >>> plan = plan_capacity(CapacityRequest(usage=UsageProfile(daily_users=10_000)))
    >>> plan.recommendation.choice
    '1x rtx4090'

Pure: plain data in, a :class:`CapacityPlan` out (the model's config and the GPU prices are
read from ``configs/`` through the launcher's loaders unless given).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from launcher.sizing.capacity.costs import PricedGpu, breakeven_busy_share, default_priced_gpus
from launcher.sizing.capacity.guide_rows import guide_notes
from launcher.sizing.capacity.options import (
    CapacityRequest,
    GpuOptionPlan,
    ServerlessPlan,
    pessimistic_gpus,
)
from launcher.sizing.capacity.recommend import Recommendation, recommend
from launcher.sizing.capacity.search import QUALITY_NOTES, search_options
from launcher.sizing.capacity.serverless import plan_serverless
from launcher.sizing.capacity.throughput import DecodeCalibration
from launcher.sizing.capacity.usage import (
    UsageProfile,
    peak_concurrency,
    peak_output_tok_s,
    peak_requests_per_second,
)
from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import ModelSpec, load_model
from launcher.sizing.quant_kernels import fp8_weight_only_note
from launcher.sizing.speed_band import SPEED_ERROR_BAND, ErrorBand

__all__ = ["CapacityPlan", "CapacityRequest", "UsageProfile", "plan_capacity"]


class CapacityPlan(BaseModel):
    """Everything ``vkit capacity`` prints; JSON-ready."""

    usage: UsageProfile
    model: str
    quant: str
    searched_quant: list[str]
    searched_tensor_parallel: list[int]
    spares: int
    eager: bool = Field(default=False, description="replicas run with --enforce-eager")
    peak_concurrency: float
    peak_requests_per_second: float
    peak_output_tok_s: float
    options: list[GpuOptionPlan]
    serverless: ServerlessPlan
    recommendation: Recommendation
    quality_notes: list[str]
    guide_notes: list[str]
    speed_band: ErrorBand = Field(
        default=SPEED_ERROR_BAND, description="the speed model's held-out error band"
    )


def plan_capacity(
    request: CapacityRequest,
    options: list[PricedGpu] | None = None,
    model: ModelSpec | None = None,
    calibration: DecodeCalibration | None = None,
    band: ErrorBand = SPEED_ERROR_BAND,
) -> CapacityPlan:
    """Plan ``request`` over ``options`` (default: every priced GPU in configs/gpus.yaml);
    each option also says the GPUs it needs at ``band``'s pessimistic end."""
    spec = model or load_model(request.model)
    priced = options if options is not None else default_priced_gpus()
    serverless = plan_serverless(request, spec, calibration)
    profiles = {p.label: p.gpu for p in priced}
    option_plans = [
        o.model_copy(
            update={
                "gpus_pessimistic": pessimistic_gpus(
                    o, profiles[o.label], spec, request, band.pessimistic_factor, calibration
                )
            }
        )
        for o in search_options(priced, spec, request, calibration)
    ]
    if serverless.worker is not None:
        rate = serverless.usd_per_gpu_second
        option_plans = [
            o.model_copy(
                update={"breakeven_busy_share": breakeven_busy_share(o.usd_per_hour, rate)}
            )
            for o in option_plans
        ]
    used = {o.quant for o in option_plans if o.gpus is not None}
    weight_only = sorted(
        o.gpu_key
        for o in option_plans
        if o.gpus is not None and o.quant == "fp8" and o.gpu_key and not get_gpu(o.gpu_key).fp8
    )
    return CapacityPlan(
        usage=request.usage,
        model=spec.name,
        quant=request.quant,
        searched_quant=list(request.quantizations),
        searched_tensor_parallel=sorted(set(request.tensor_parallel)),
        spares=request.spares,
        eager=request.eager,
        peak_concurrency=peak_concurrency(request.usage),
        peak_requests_per_second=peak_requests_per_second(request.usage),
        peak_output_tok_s=peak_output_tok_s(request.usage),
        options=option_plans,
        serverless=serverless,
        recommendation=recommend(request, option_plans, serverless),
        quality_notes=[QUALITY_NOTES[q] for q in QUALITY_NOTES if q in used]
        + ([fp8_weight_only_note(weight_only)] if weight_only else []),
        guide_notes=guide_notes(spec, request.quant, [o.gpu_key for o in option_plans]),
        speed_band=band,
    )
