"""Decode speed by the bandwidth roofline (REFERENCE section 2).

Each decode step reads every weight once plus the KV cache of every running sequence:
single-stream speed ~ 0.75-0.8 x bandwidth / bytes read per token. With N sequences a step
reads weights + N x context x KV bytes/token, and does 2 x params x N FLOPs; the step takes
the longer of the two (0.75 of the bandwidth, 50% of the dense bf16 peak). Prefill and
scheduling are left out, so the aggregate is a ceiling that real runs approach at low
concurrency and undershoot at high concurrency.

    Check: Mistral-7B fp16 on an RTX 4090, 320-token contexts: 206 / 408 / 798 tok/s at
    concurrency 4 / 8 / 16 here; published (256 in / 128 out): 210 / 377 / 644.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.sizing.gpus import GpuProfile
from launcher.sizing.models import ModelSpec

BANDWIDTH_EFFICIENCY = 0.75
COMPUTE_EFFICIENCY = 0.5


@dataclass(frozen=True)
class DecodeSpeed:
    single_stream: float
    aggregate: float
    concurrency: int


def _step_seconds(
    model: ModelSpec,
    gpu: GpuProfile,
    weights_bytes: int,
    kv_bytes_per_token: int,
    concurrency: int,
    context: int,
    tensor_parallel: int,
) -> float:
    read = weights_bytes + concurrency * context * kv_bytes_per_token
    memory_s = read / (BANDWIDTH_EFFICIENCY * gpu.bandwidth_gbs * 1e9)
    flops = 2 * model.parameter_count / tensor_parallel * concurrency
    compute_s = flops / (COMPUTE_EFFICIENCY * gpu.bf16_tflops * 1e12)
    return max(memory_s, compute_s)


def decode_throughput(
    *,
    model: ModelSpec,
    gpu: GpuProfile,
    weights_bytes: int,
    kv_bytes_per_token: int,
    concurrency: int,
    context: int,
    tensor_parallel: int = 1,
) -> DecodeSpeed:
    """Single-stream and aggregate output tokens/s; sizes are per GPU (after TP split)."""
    args = (model, gpu, weights_bytes, kv_bytes_per_token)
    single = 1.0 / _step_seconds(*args, 1, context, tensor_parallel)
    many = concurrency / _step_seconds(*args, concurrency, context, tensor_parallel)
    return DecodeSpeed(
        single_stream=round(single, 1), aggregate=round(many, 1), concurrency=concurrency
    )
