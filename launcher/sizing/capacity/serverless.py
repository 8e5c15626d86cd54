"""Serverless priced per GPU class: the worker a model needs, its seconds per request, cold starts.

A serverless provider (``configs/serverless.yaml``) rents workers by the second, at a price per
GPU class. The model must fit a worker (one GPU, or several for tensor parallelism) and decode
at the user's speed on it, as a dedicated replica must: the planner takes the cheapest worker
class, quantization and size that does, so a 70B is priced on an 80 GB-class worker (or two),
never at a 7B's price.

Billed seconds per request (``billing: generation``): the request's own prefill and decode on
that GPU (``launcher.sizing.capacity.throughput``'s speed for one stream: no batching credit),
plus what the worker's idle periods cost. With ``lambda`` requests a second of ``s`` seconds
each, a request finds no request running with probability ``exp(-lambda x s)`` (requests in
flight are Poisson, M/G/infinity), and the idle period before the next one (mean ``1/lambda``)
costs either its length (the worker kept warm) or a cold start of ``c`` seconds (the worker let
go); with the provider's idle timeout ``tau`` it costs
``(1 - exp(-lambda tau)) / lambda + exp(-lambda tau) x c``. The planner bills the cheapest of
the three, as an operator sets the timeout (long when traffic is dense, short when a cold start
costs less than waiting)::

    billed = s + exp(-lambda x s) x min(timeout's cost, 1 / lambda, c)

The day is the guide's two
windows: ``peak_share`` of the requests in ``peak_hours``, the rest in the other hours. With
``billing: reading`` a request holds a worker for tokens / the user's reading speed (the cost
guide's 5 s) and the guide counts no idle time or cold start: its serverless column
(docs/gpus-and-costs.md#monthly-cost) is the ``cost-guide`` provider.

    >>> terms = load_serverless()["runpod"]
    >>> terms.billing, terms.idle_timeout_s
    ('generation', 5.0)
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from launcher.config_files import CONFIG_DIR
from launcher.errors import PriceError
from launcher.sizing.capacity.options import CapacityRequest, ServerlessPlan, request_throughput
from launcher.sizing.capacity.search import QUALITY_RANK, checkpoint_or_reason
from launcher.sizing.capacity.throughput import workload_for
from launcher.sizing.capacity.usage import (
    DAYS_PER_MONTH,
    SECONDS_PER_HOUR,
    UsageProfile,
    requests_per_day,
    seconds_per_request,
)
from launcher.sizing.gpus import GIB, get_gpu
from launcher.sizing.memory import Quantization, weight_bytes
from launcher.sizing.models import ModelSpec
from launcher.sizing.quant_kernels import planned_speed_at
from launcher.sizing.speed import SpeedCalibration

SERVERLESS_FILE = CONFIG_DIR / "serverless.yaml"
DEFAULT_PROVIDER = "runpod"

Billing = Literal["generation", "reading"]


class ColdStart(BaseModel):
    """Seconds to start a worker: ``fixed_s`` + the weights' GiB / ``load_gib_per_s``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fixed_s: float = Field(default=0.0, ge=0)
    load_gib_per_s: float = Field(default=0.0, ge=0, description="0: loading is not counted")

    def seconds(self, weights: int) -> float:
        load = weights / GIB / self.load_gib_per_s if self.load_gib_per_s > 0 else 0.0
        return self.fixed_s + load


class WorkerClass(BaseModel):
    """One GPU class a provider rents: its name there, the profile it is planned with, price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    gpu: str
    usd_per_second: float | None = Field(default=None, gt=0)
    usd_per_hour: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_price(self) -> WorkerClass:
        if (self.usd_per_second is None) == (self.usd_per_hour is None):
            raise ValueError(f"{self.name}: give usd_per_second or usd_per_hour, not both")
        return self

    @property
    def rate(self) -> float:
        """$ per second of one GPU of this class."""
        if self.usd_per_second is not None:
            return self.usd_per_second
        assert self.usd_per_hour is not None
        return self.usd_per_hour / SECONDS_PER_HOUR


class ServerlessTerms(BaseModel):
    """One provider's serverless terms (``configs/serverless.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = ""
    source: str
    billing: Billing
    idle_timeout_s: float = Field(ge=0)
    cold_start: ColdStart = Field(default_factory=ColdStart)
    classes: list[WorkerClass] = Field(min_length=1)


def load_serverless(path: Path | None = None) -> dict[str, ServerlessTerms]:
    """Every provider in ``path`` (default ``configs/serverless.yaml``), by name."""
    return dict(_load_cached(Path(path or SERVERLESS_FILE).resolve()))


@cache
def _load_cached(path: Path) -> tuple[tuple[str, ServerlessTerms], ...]:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: expected a mapping of provider -> terms")
    return tuple((key, ServerlessTerms(key=key, **terms)) for key, terms in raw.items())


def get_terms(provider: str) -> ServerlessTerms:
    """A provider's terms; a :class:`PriceError` (bad input) naming the known ones."""
    known = load_serverless()
    if provider not in known:
        raise PriceError(
            f"unknown serverless provider {provider!r}; known: {', '.join(sorted(known))}"
        )
    return known[provider]


def _windows(usage: UsageProfile) -> list[tuple[float, float]]:
    """(requests a day, seconds) of the peak window and of the rest of the day."""
    day = requests_per_day(usage)
    peak = (day * usage.peak_share, usage.peak_hours * SECONDS_PER_HOUR)
    rest = (day * (1 - usage.peak_share), (24 - usage.peak_hours) * SECONDS_PER_HOUR)
    return [w for w in (peak, rest) if w[0] > 0 and w[1] > 0]


def billed_seconds_per_request(plan: ServerlessPlan, usage: UsageProfile) -> float:
    """Worker-seconds one request is billed for on average (module docstring)."""
    total = 0.0
    requests = 0.0
    for count, seconds in _windows(usage):
        rate = count / seconds
        idle_periods = math.exp(-rate * plan.seconds_per_request)  # per request
        gap = 1.0 / rate  # the mean idle period
        tau = plan.idle_timeout_s
        at_default = (1 - math.exp(-rate * tau)) / rate + math.exp(-rate * tau) * plan.cold_start_s
        per_idle = min(at_default, gap, plan.cold_start_s)
        total += count * (plan.seconds_per_request + idle_periods * per_idle)
        requests += count
    return total / requests


def serverless_monthly_usd(plan: ServerlessPlan, usage: UsageProfile) -> float | None:
    """The month's bill for ``usage`` on ``plan``'s worker; None when no worker serves."""
    if plan.worker is None:
        return None
    billed = billed_seconds_per_request(plan, usage)
    worker_rate = plan.usd_per_gpu_second * plan.gpus_per_worker
    return requests_per_day(usage) * DAYS_PER_MONTH * billed * worker_rate


def _quote(
    request: CapacityRequest,
    terms: ServerlessTerms,
    worker: WorkerClass,
    model: ModelSpec,
    quant: Quantization,
    gpus: int,
    calibration: SpeedCalibration | None,
) -> ServerlessPlan | str:
    """The plan of one worker (class, quantization, GPUs), or why it cannot serve."""
    usage = request.usage
    gpu = get_gpu(worker.gpu)
    speed = request_throughput(request, gpu, model, quant, gpus, calibration)
    if speed.users == 0:
        return f"{worker.name} x{gpus} {quant}: {speed.limited_by}"
    if terms.billing == "reading":
        seconds = seconds_per_request(usage)
    else:
        workload = workload_for(
            model,
            quant,
            prompt_tokens=usage.prompt_tokens,
            output_tokens=usage.tokens_per_request,
            tensor_parallel=gpus,
            eager=request.eager,
        )
        one = planned_speed_at(workload, gpu, 1, calibration)
        seconds = one.prefill_s + usage.tokens_per_request / one.single_stream_tok_s
    weights = weight_bytes(model, quant, gpus) * gpus
    plan = ServerlessPlan(
        provider=terms.key,
        source=terms.source,
        worker=worker.name,
        gpu_key=gpu.key,
        gpus_per_worker=gpus,
        quant=quant,
        usd_per_gpu_second=request.serverless_usd_per_gpu_second or worker.rate,
        seconds_per_request=seconds,
        cold_start_s=terms.cold_start.seconds(weights),
        idle_timeout_s=terms.idle_timeout_s,
    )
    return _priced(plan, usage)


def _priced(plan: ServerlessPlan, usage: UsageProfile) -> ServerlessPlan:
    monthly = serverless_monthly_usd(plan, usage)
    assert monthly is not None
    billed = billed_seconds_per_request(plan, usage)
    busy = requests_per_day(usage) * DAYS_PER_MONTH * billed * plan.gpus_per_worker
    return plan.model_copy(
        update={
            "busy_gpu_seconds": busy,
            "monthly_usd": monthly,
            "usd_per_user": monthly / usage.daily_users,
        }
    )


def plan_serverless(
    request: CapacityRequest, model: ModelSpec, calibration: SpeedCalibration | None = None
) -> ServerlessPlan:
    """The cheapest worker of ``request.serverless`` that serves ``model`` at the user's speed,
    over the request's quantizations and tensor-parallel sizes (ties: fewer GPUs, better
    quality); ``worker`` None, with the reasons, when none does."""
    terms = get_terms(request.serverless)
    found: list[ServerlessPlan] = []
    reasons: list[str] = []
    for worker in terms.classes:
        per_node = get_gpu(worker.gpu).per_node
        for quant in request.quantizations:
            if checkpoint_or_reason(request.model, quant)[1] is not None:
                continue
            for gpus in sorted(set(request.tensor_parallel)):
                if gpus > per_node:
                    continue
                quote = _quote(request, terms, worker, model, quant, gpus, calibration)
                if isinstance(quote, str):
                    reasons.append(quote)
                else:
                    found.append(quote)
    if found:
        return min(
            found,
            key=lambda p: (p.monthly_usd or 0.0, p.gpus_per_worker, QUALITY_RANK.get(p.quant, 9)),
        )
    return ServerlessPlan(
        provider=terms.key,
        source=terms.source,
        note=f"no {terms.key} worker serves {model.name} at {request.usage.user_tok_s:g} tok/s: "
        + "; ".join(reasons[:4]),
    )
