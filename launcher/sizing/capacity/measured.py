"""Capacity measured on a running deployment: users per GPU, utilization, the guide's rules.

The input is the last window of five series, one value per step (what Prometheus' range
query returns), summed over the fleet:

    output_tok_s   sum(rate(vllm:generation_tokens_total[1m]))
    running        sum(vllm:num_requests_running)
    waiting        sum(vllm:num_requests_waiting)
    requests_s     sum(rate(vllm:request_success_total[1m]))
    gpu_util       avg(DCGM_FI_DEV_GPU_UTIL)           (0-100, NVIDIA's DCGM exporter)
    gpus           count(DCGM_FI_DEV_GPU_UTIL)

The peak is the step with the most running requests. The guide's rules
(docs/gpus-and-costs.md#rules-of-thumb): utilization above 80% at peak: add a GPU; below 20%:
overpaying; a growing queue: not enough throughput. The forecast scales the measured peak to the
peak of ``--users`` daily users (the guide's usage model) and sizes the fleet so that the peak runs
at 80% utilization, assuming utilization grows in proportion to running requests (true while vLLM
batches below its limits).

    >>> window = MeasuredWindow(output_tok_s=[400.0], running=[10.0], waiting=[0.0],
    ...                         requests_s=[2.0], gpu_util=[50.0], gpus=2)
    >>> assess(window).users_per_gpu_at_peak
    5.0
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from launcher.sizing.capacity.usage import UsageProfile, peak_concurrency

ADD_GPU_ABOVE = 80.0  # % utilization at peak (the guide)
OVERPAYING_BELOW = 20.0
QUEUE_GROWTH_MIN = 1.0  # waiting requests gained over the window that count as growing


class MeasuredWindow(BaseModel):
    """Aligned samples over the window (oldest first); ``gpus``: GPUs DCGM reports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_tok_s: list[float] = Field(min_length=1)
    running: list[float] = Field(min_length=1)
    waiting: list[float] = Field(min_length=1)
    requests_s: list[float] = Field(min_length=1)
    gpu_util: list[float] = Field(min_length=1)
    gpus: int = Field(ge=1)
    window: str = ""

    @model_validator(mode="after")
    def _aligned(self) -> MeasuredWindow:
        lengths = {len(self.output_tok_s), len(self.running), len(self.waiting)}
        lengths |= {len(self.requests_s), len(self.gpu_util)}
        if len(lengths) != 1:
            raise ValueError("the series must have one sample per step each")
        return self


class MeasuredCapacity(BaseModel):
    """What the window shows, the guide's verdicts, and the forecast for ``users``."""

    gpus: int
    window: str
    peak_running: float
    peak_output_tok_s: float
    peak_requests_s: float
    peak_gpu_util: float
    mean_gpu_util: float
    users_per_gpu_at_peak: float
    per_user_tok_s_at_peak: float
    queue_start: float
    queue_end: float
    verdicts: list[str]
    forecast_users: int | None = None
    forecast_peak_concurrency: float | None = None
    forecast_gpus: int | None = None
    forecast_note: str = ""


def _verdicts(window: MeasuredWindow, peak_util: float, growth: float) -> list[str]:
    verdicts = []
    if peak_util > ADD_GPU_ABOVE:
        verdicts.append(
            f"GPU utilization {peak_util:.0f}% at peak is above {ADD_GPU_ABOVE:.0f}%: add a GPU"
        )
    elif peak_util < OVERPAYING_BELOW:
        verdicts.append(
            f"GPU utilization {peak_util:.0f}% at peak is below {OVERPAYING_BELOW:.0f}%: "
            "overpaying, fewer GPUs (or serverless) would do"
        )
    if growth >= QUEUE_GROWTH_MIN:
        verdicts.append(
            f"the queue grew from {window.waiting[0]:.0f} to {window.waiting[-1]:.0f} waiting "
            "requests: not enough throughput"
        )
    if not verdicts:
        verdicts.append(
            f"GPU utilization {peak_util:.0f}% at peak is within {OVERPAYING_BELOW:.0f}-"
            f"{ADD_GPU_ABOVE:.0f}% and the queue is not growing: sized right"
        )
    return verdicts


def assess(window: MeasuredWindow, users: int | None = None) -> MeasuredCapacity:
    """Measured users/GPU and utilization at peak, the guide's verdicts, and (with
    ``users``) the GPUs the peak of that many daily users needs at 80% utilization."""
    peak = max(range(len(window.running)), key=lambda i: window.running[i])
    running = window.running[peak]
    peak_util = max(window.gpu_util)
    growth = window.waiting[-1] - window.waiting[0]
    result = MeasuredCapacity(
        gpus=window.gpus,
        window=window.window,
        peak_running=running,
        peak_output_tok_s=window.output_tok_s[peak],
        peak_requests_s=window.requests_s[peak],
        peak_gpu_util=peak_util,
        mean_gpu_util=sum(window.gpu_util) / len(window.gpu_util),
        users_per_gpu_at_peak=running / window.gpus,
        per_user_tok_s_at_peak=window.output_tok_s[peak] / running if running else 0.0,
        queue_start=window.waiting[0],
        queue_end=window.waiting[-1],
        verdicts=_verdicts(window, peak_util, growth),
    )
    if users is None:
        return result
    return result.model_copy(update=forecast(result, users))


def forecast(measured: MeasuredCapacity, users: int) -> dict[str, object]:
    """GPUs for the peak of ``users`` daily users, scaled from the measured peak."""
    target = peak_concurrency(UsageProfile(daily_users=users))
    update: dict[str, object] = {"forecast_users": users, "forecast_peak_concurrency": target}
    if measured.peak_running <= 0 or measured.peak_gpu_util <= 0:
        update["forecast_note"] = "no requests ran in the window: nothing to scale from"
        return update
    # users one GPU carries at 80% utilization, if utilization follows running requests
    per_gpu = measured.users_per_gpu_at_peak * ADD_GPU_ABOVE / measured.peak_gpu_util
    update["forecast_gpus"] = max(1, math.ceil(target / per_gpu - 1e-9))
    update["forecast_note"] = (
        f"{per_gpu:.1f} concurrent users per GPU at {ADD_GPU_ABOVE:.0f}% utilization "
        f"(measured: {measured.users_per_gpu_at_peak:.1f} at {measured.peak_gpu_util:.0f}%)"
    )
    return update


def render_measured(measured: MeasuredCapacity) -> str:
    """The measured report as text."""
    lines = [
        f"measured over the last {measured.window} on {measured.gpus} GPU(s):",
        f"  peak      {measured.peak_running:.0f} running requests = "
        f"{measured.users_per_gpu_at_peak:.1f} concurrent users per GPU, "
        f"{measured.per_user_tok_s_at_peak:.1f} tok/s each, "
        f"{measured.peak_output_tok_s:,.0f} output tok/s, {measured.peak_requests_s:.2f} req/s",
        f"  GPU util  {measured.peak_gpu_util:.0f}% at peak, {measured.mean_gpu_util:.0f}% on "
        "average (DCGM)",
        f"  queue     {measured.queue_start:.0f} -> {measured.queue_end:.0f} waiting requests",
    ]
    lines += [f"verdict: {verdict}" for verdict in measured.verdicts]
    if measured.forecast_users is not None:
        gpus = "-" if measured.forecast_gpus is None else f"{measured.forecast_gpus} GPU(s)"
        lines.append(
            f"forecast: {measured.forecast_users:,} daily users peak at "
            f"~{measured.forecast_peak_concurrency or 0:.1f} concurrent requests -> {gpus}; "
            f"{measured.forecast_note}"
        )
    return "\n".join(lines) + "\n"
