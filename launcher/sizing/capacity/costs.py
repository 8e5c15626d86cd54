"""Dollars: dedicated GPUs by the hour, serverless by the busy second.

A month is 720 hours (the guide's ``$/hr x 720``: 0.39 -> $281, 0.88 -> $634, 1.87 -> $1,346,
8.46 -> $6,091). Serverless bills only the seconds a request keeps a GPU busy: every request
holds one for ``tokens_per_request / user_tok_s`` seconds (5 s in the guide), with no credit
for batching. The default rate is calibrated to the guide's serverless column
(docs/gpus-and-costs.md#monthly-cost): 100 DAU x 3 requests x 30 days x 5 s = 45,000 GPU-seconds a
month, and ~$15 for them gives $15 / 45,000 s = $0.000333 per GPU-second ($1.20 per GPU-hour); 1,000
DAU then cost ~$150, 10,000 ~$1,500 and 100,000 ~$15,000, as in the guide.

    >>> round(monthly_cost(0.39))
    281
    >>> gpus_needed(36.46, users_per_gpu=10, spares=0)
    4
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from launcher.errors import PriceError
from launcher.sizing.capacity.usage import (
    HOURS_PER_MONTH,
    SECONDS_PER_HOUR,
    UsageProfile,
    busy_seconds_per_month,
)
from launcher.sizing.gpus import GpuProfile, get_gpu, load_gpus, without_nvlink

SERVERLESS_USD_PER_GPU_HOUR = 1.20
SERVERLESS_USD_PER_GPU_SECOND = SERVERLESS_USD_PER_GPU_HOUR / SECONDS_PER_HOUR


@dataclass(frozen=True)
class PricedGpu:
    """A GPU at one provider's hourly price: one option the planner compares."""

    gpu: GpuProfile
    provider: str
    usd_per_hour: float

    @property
    def label(self) -> str:
        """``rtx4090`` for a GPU's default price, ``h100-sxm@aws`` for another provider's."""
        if self.provider in ("", self.gpu.default_price):
            return self.gpu.key
        return f"{self.gpu.key}@{self.provider}"


def monthly_cost(usd_per_hour: float) -> float:
    return usd_per_hour * HOURS_PER_MONTH


def gpus_needed(peak_concurrency: float, users_per_gpu: int, spares: int) -> int:
    """GPUs for the peak (at least one), plus ``spares`` for redundancy (N+1: spares=1)."""
    if users_per_gpu <= 0:
        raise ValueError("users_per_gpu must be positive")
    # A hair of tolerance so that 40.0000001 / 10 does not round up to 5 GPUs.
    return max(1, math.ceil(peak_concurrency / users_per_gpu - 1e-9)) + spares


def serverless_monthly_cost(profile: UsageProfile, usd_per_gpu_second: float) -> float:
    return busy_seconds_per_month(profile) * usd_per_gpu_second


def breakeven_busy_share(usd_per_hour: float, usd_per_gpu_second: float) -> float:
    """Busy share above which a dedicated GPU costs less than the same seconds serverless.

    It is the dedicated price over the serverless price of a busy GPU-hour: 0.39 / 1.20 =
    33% for an RTX 4090 at the default rate. Above 100%, one dedicated GPU must do the
    work of several busy serverless GPUs (batching) before it pays off.
    """
    return usd_per_hour / (usd_per_gpu_second * SECONDS_PER_HOUR)


def default_priced_gpus(gpus: dict[str, GpuProfile] | None = None) -> list[PricedGpu]:
    """Every GPU with a price, at every provider listed for it (cheapest first)."""
    options = [
        PricedGpu(gpu, provider, price)
        for gpu in (gpus or load_gpus()).values()
        for provider, price in gpu.prices.items()
    ]
    return sorted(options, key=lambda option: option.usd_per_hour)


def parse_priced_gpu(spec: str) -> PricedGpu:
    """``GPU[@PROVIDER][=USD_PER_HOUR]``: ``rtx4090``, ``h100@aws``, ``l4=0.80``, ``h100@lab=2``."""
    name, _, price_text = spec.partition("=")
    gpu_name, _, provider = name.partition("@")
    gpu = get_gpu(gpu_name)
    if price_text:
        try:
            price = float(price_text)
        except ValueError:
            raise PriceError(
                f"{spec!r}: the price after '=' must be $/hr, e.g. {name}=0.80"
            ) from None
        if not price > 0:
            raise PriceError(f"{spec!r}: the price must be positive")
        return PricedGpu(gpu, provider or "custom", price)
    provider = provider or gpu.default_price or ""
    if provider not in gpu.prices:
        known = ", ".join(gpu.prices) or "none"
        raise PriceError(
            f"{spec!r}: no {'price' if not provider else repr(provider) + ' price'} for "
            f"{gpu.key} (providers: {known}); give one as {gpu.key}=USD_PER_HOUR"
        )
    return PricedGpu(gpu, provider, gpu.prices[provider])


def over_pcie(options: list[PricedGpu]) -> list[PricedGpu]:
    """The same options on boards without NVLink (``--no-nvlink``): tensor parallel's
    all-reduce over PCIe (:func:`launcher.sizing.gpus.without_nvlink`)."""
    return [replace(option, gpu=without_nvlink(option.gpu)) for option in options]
