"""The configuration search: for each priced GPU, every quantization x tensor-parallel size.

For one priced GPU the search plans every configuration the request allows (its baseline
precision and ``allow_quant``, times its ``tensor_parallel`` sizes up to a node) and keeps
the cheapest one that serves the traffic at the per-user speed, context and redundancy asked
for. Ties go to the fewer GPUs, then the better quality (16-bit > fp8 > int8 > int4), then the
smaller TP. Every other configuration is kept as one line saying why it lost.

A configuration that needs quantized weights (int8, AWQ, GPTQ) of a catalogued model is out
when no checkpoint is known (``configs/checkpoints.yaml``): the planner does not recommend
what cannot be launched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from launcher.errors import NoCheckpointError
from launcher.sizing.capacity.costs import PricedGpu
from launcher.sizing.capacity.options import (
    CapacityRequest,
    GpuOptionPlan,
    Rejected,
    plan_option,
)
from launcher.sizing.capacity.throughput import gpu_throughput
from launcher.sizing.checkpoints import served_checkpoint
from launcher.sizing.memory import Quantization
from launcher.sizing.models import ModelSpec
from launcher.sizing.speed import SpeedCalibration

# Quality rank (lower is better) for ties; int4 last.
QUALITY_RANK: dict[str, int] = {"bf16": 0, "fp16": 0, "fp8": 1, "int8": 2, "awq": 3, "gptq": 3}

# What the cost guide (docs/gpus-and-costs.md#quantization-and-quality) and the published
# checkpoints say each costs in quality.
QUALITY_NOTES: dict[str, str] = {
    "fp8": "FP8 W8A8: published FP8 checkpoints score within ~0.5% of 16-bit "
    "(Llama-3.1-70B-Instruct-FP8: 84.29 vs 84.40 on OpenLLM v1, its model card)",
    "int8": "INT8: ~2x smaller weights than 16-bit (the cost guide)",
    "awq": "INT4 (AWQ): ~4x smaller weights with <3% quality loss (the cost guide)",
    "gptq": "INT4 (GPTQ): ~4x smaller weights with <3% quality loss (the cost guide)",
}

# ``--allow-quant`` spellings: int4 means AWQ or GPTQ, whichever has a checkpoint.
QUANT_ALIASES: dict[str, tuple[Quantization, ...]] = {
    "int4": ("awq", "gptq"),
    "w4a16": ("awq", "gptq"),
    "w8a8": ("int8",),
    "bf16": ("bf16",),
    "fp16": ("fp16",),
    "fp8": ("fp8",),
    "int8": ("int8",),
    "awq": ("awq",),
    "gptq": ("gptq",),
}


def parse_allowed(text: str) -> tuple[Quantization, ...]:
    """``int4,fp8`` -> ``('awq', 'gptq', 'fp8')``; ValueError names an unknown one."""
    found: list[Quantization] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        if part not in QUANT_ALIASES:
            raise ValueError(
                f"unknown quantization {part!r}; known: {', '.join(sorted(QUANT_ALIASES))}"
            )
        found += QUANT_ALIASES[part]
    if not found:
        raise ValueError("give at least one quantization, e.g. fp8,int4")
    return tuple(dict.fromkeys(found))


def _checkpoint(request: CapacityRequest, quant: Quantization) -> tuple[str | None, str | None]:
    return checkpoint_or_reason(request.model, quant)


def checkpoint_or_reason(model: str, quant: Quantization) -> tuple[str | None, str | None]:
    """(repository, None) when it can run; (None, why not) when no checkpoint is known."""
    try:
        found = served_checkpoint(model, quant)
    except NoCheckpointError:
        return None, f"no known {quant} checkpoint of {model} (llm-compressor makes one)"
    return (found.repo if found else None), None


def _name(plan: GpuOptionPlan) -> str:
    return f"TP{plan.tensor_parallel} {plan.quant}"


def short_note(plan: GpuOptionPlan) -> str:
    """The limit's detail without the fit solver's tail."""
    return plan.note.split(": no memory is left")[0]


def why_not(plan: GpuOptionPlan) -> str:
    """``TP2 fp16: does-not-fit (weights (65.71 GiB) and overhead ... budget)``."""
    note = short_note(plan)
    return f"{_name(plan)}: {plan.limited_by}" + (f" ({note})" if note else "")


def _rejected(plan: GpuOptionPlan, winner: GpuOptionPlan | None) -> Rejected:
    if plan.monthly_usd is None or plan.gpus is None or winner is None:
        return Rejected(config=_name(plan), reason=plan.limited_by, detail=short_note(plan))
    more = plan.monthly_usd - (winner.monthly_usd or 0.0)
    return Rejected(
        config=_name(plan),
        reason="costs-more" if more > 0.005 else "same-cost",
        detail=f"{plan.gpus} GPUs, ${plan.monthly_usd:,.0f}/month",
        monthly_usd=plan.monthly_usd,
    )


def _quantizations(request: CapacityRequest) -> list[Quantization]:
    """The request's quantizations; GPTQ only as int4's fallback when AWQ has no checkpoint."""
    quants = list(request.quantizations)
    if "awq" in quants and "gptq" in quants and _checkpoint(request, "awq")[1] is None:
        quants.remove("gptq")
    return quants


def _rank(plan: GpuOptionPlan) -> tuple[float, int, int, int]:
    return (
        plan.monthly_usd or 0.0,
        plan.gpus or 0,
        QUALITY_RANK.get(plan.quant, 9),
        plan.tensor_parallel,
    )


def search_option(
    option: PricedGpu,
    model: ModelSpec,
    request: CapacityRequest,
    calibration: SpeedCalibration | None = None,
) -> GpuOptionPlan:
    """The best configuration of ``option`` for ``request``, with the others as ``rejected``.

    When nothing serves, the baseline configuration (its reason in ``limited_by``) is returned
    with every other one's reason."""
    plans: list[GpuOptionPlan] = []
    for quant in _quantizations(request):
        repo, missing = _checkpoint(request, quant)
        sizes = [
            size for size in sorted(set(request.tensor_parallel)) if size <= option.gpu.per_node
        ]
        for size in sizes or [1]:
            plan = plan_option(option, model, request, calibration, quant, size)
            if missing is not None and plan.monthly_usd is not None:
                plan = plan.model_copy(
                    update={
                        "gpus": None,
                        "monthly_usd": None,
                        "usd_per_user": None,
                        "utilization": None,
                        "limited_by": "no-checkpoint",
                        "note": missing,
                    }
                )
            plans.append(plan.model_copy(update={"checkpoint": repo}))
    serving = [plan for plan in plans if plan.monthly_usd is not None]
    winner = min(serving, key=_rank) if serving else plans[0]
    rejected = [
        _rejected(plan, winner if serving else None) for plan in plans if plan is not winner
    ]
    return winner.model_copy(update={"rejected": rejected})


def search_options(
    options: list[PricedGpu],
    model: ModelSpec,
    request: CapacityRequest,
    calibration: SpeedCalibration | None = None,
) -> list[GpuOptionPlan]:
    return [search_option(option, model, request, calibration) for option in options]


@dataclass(frozen=True)
class BestConfiguration:
    """The cheapest way found to serve ``concurrency`` users: replicas of TP GPUs."""

    option: PricedGpu
    quant: Quantization
    tensor_parallel: int
    replicas: int
    users_per_replica: int

    @property
    def gpus(self) -> int:
        return self.replicas * self.tensor_parallel

    @property
    def usd_per_hour(self) -> float:
        return self.gpus * self.option.usd_per_hour

    def describe(self) -> str:
        price = f", ${self.usd_per_hour:,.2f}/hr" if self.usd_per_hour > 0 else ""
        return (
            f"{self.gpus}x {self.option.label} TP{self.tensor_parallel} {self.quant}: "
            f"{self.replicas} replica(s) of {self.users_per_replica} users{price}"
        )


def best_configuration(
    model_name: str,
    model: ModelSpec,
    options: list[PricedGpu],
    *,
    concurrency: int,
    user_tok_s: float,
    quants: tuple[Quantization, ...],
    sizes: tuple[int, ...] = (1, 2, 4, 8),
    prompt_tokens: int = 500,
    output_tokens: int = 200,
) -> BestConfiguration | None:
    """Over ``options`` x ``quants`` x ``sizes``: the lowest $/hr serving ``concurrency``
    users at ``user_tok_s`` each (ties: fewer GPUs, better quality, smaller TP)."""
    found: list[tuple[tuple[float, int, int, int], BestConfiguration]] = []
    for option in options:
        for quant in quants:
            if checkpoint_or_reason(model_name, quant)[1] is not None:
                continue
            for size in sizes:
                if size > option.gpu.per_node:
                    continue
                speed = gpu_throughput(
                    option.gpu,
                    model,
                    quant,
                    target_tok_s=user_tok_s,
                    prompt_tokens=prompt_tokens,
                    output_tokens=output_tokens,
                    tensor_parallel=size,
                )
                if speed.users == 0:
                    continue
                replicas = math.ceil(concurrency / speed.users)
                best = BestConfiguration(option, quant, size, replicas, speed.users)
                rank = (best.usd_per_hour, best.gpus, QUALITY_RANK.get(quant, 9), size)
                found.append((rank, best))
    return min(found, key=lambda pair: pair[0])[1] if found else None
