"""How many users one GPU serves at a per-user speed: a calibrated decode roofline.

One decode step of a batch of ``B`` sequences, each holding ``C`` tokens of context, takes::

    t(B) = weights / (eta x bandwidth)                      # every weight read once per step
         + B x C x kv_bytes_per_token / (eta x bandwidth)    # every sequence's KV read
         + B x 2 x params / (mu x bf16 FLOP/s)               # matmuls, per sequence
         + B x per_sequence_overhead                         # sampling, scheduling, kernels

Each sequence gets ``1 / t(B)`` tokens/s and the GPU ``B / t(B)``: batching amortizes the
weight reads, which is where continuous batching's gains come from. The users one GPU
sustains is the largest ``B`` whose per-user speed stays at or above the target, capped by
the fit solver's KV capacity (``kv_tokens // C``) and vLLM's ``max_num_seqs``.

The constants are calibrated, not looked up: bandwidth efficiency 0.85, compute efficiency
0.35 and 0.4 ms per sequence per step put the model inside every row of the cost guide's
throughput table (REFERENCE §3), each row taken at its own per-user speed (mid total / mid
users: 30-40 tok/s) with a 600-token context (500 prompt + half of a 200-token reply), and
with the quantization the row implies: 7B fp16 on RTX 4090 / L40S / H100 and 13B fp16 on an
H100 as stated; 13B on an L40S in int4 (AWQ), because 26 GB of fp16 weights over 864 GB/s
cannot reach 40 tok/s even for one stream; 70B in fp8 on an H100 (fp16 does not fit) and on
an H200 (141 GB of fp16 weights exceed 0.92 x its memory). The same constants reproduce
REFERENCE §2's "single-stream decode ~0.75-0.8 x bandwidth / bytes of weights" (Mistral-7B
fp16 on an RTX 4090: 57 tok/s = 0.81 x 1008 GB/s / 14.5 GB) and stay within 3-20% below the
published RTX 4090 curve of §2 (203 vs 210 tok/s at concurrency 4, 950 vs 1190 at 48): the
guide is more conservative at large batches than that benchmark, and so is this model.

Unlike ``launcher.sizing.roofline`` (the fit solver's floor estimate, which takes the longer of
memory and compute time), the terms here add up and carry a per-sequence cost: with that
floor model, an H100 would keep ~880 Mistral-7B streams at 30 tok/s, against the guide's
40-60.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from launcher.errors import UnsupportedQuantizationError
from launcher.sizing.fit import FitRequest, default_max_num_seqs, plan_fit
from launcher.sizing.gpus import GpuProfile
from launcher.sizing.memory import Quantization, weight_bytes
from launcher.sizing.models import ModelSpec

Limit = Literal["speed", "kv-cache", "max-num-seqs", "too-slow", "does-not-fit", "unsupported"]


@dataclass(frozen=True)
class DecodeCalibration:
    """The throughput model's constants (see the module docstring for where they come from).

    ``bandwidth_efficiency``: share of peak memory bandwidth a decode step achieves;
    ``compute_efficiency``: share of the dense bf16 peak the per-sequence matmuls achieve;
    ``per_sequence_overhead_s``: fixed cost each running sequence adds to a step.
    """

    bandwidth_efficiency: float = 0.85
    compute_efficiency: float = 0.35
    per_sequence_overhead_s: float = 0.4e-3


@dataclass(frozen=True)
class DecodeWorkload:
    """What one GPU's decode step must move and compute (sizes per GPU, in bytes)."""

    weight_bytes: int
    kv_bytes_per_token: int
    flops_per_token: float
    context_tokens: int


@dataclass(frozen=True)
class GpuThroughput:
    """Concurrent users one GPU sustains at ``target_tok_s``, and why not more."""

    users: int
    per_user_tok_s: float
    total_tok_s: float
    single_stream_tok_s: float
    kv_tokens: int
    limited_by: Limit
    note: str = ""


def decode_step_seconds(
    workload: DecodeWorkload, gpu: GpuProfile, batch: int, calibration: DecodeCalibration
) -> float:
    """Seconds one decode step of ``batch`` sequences takes (module docstring formula)."""
    bandwidth = calibration.bandwidth_efficiency * gpu.bandwidth_gbs * 1e9
    flops = calibration.compute_efficiency * gpu.bf16_tflops * 1e12
    per_sequence = (
        workload.context_tokens * workload.kv_bytes_per_token / bandwidth
        + workload.flops_per_token / flops
        + calibration.per_sequence_overhead_s
    )
    return workload.weight_bytes / bandwidth + batch * per_sequence


def max_batch_at_speed(
    workload: DecodeWorkload, gpu: GpuProfile, target_tok_s: float, calibration: DecodeCalibration
) -> int:
    """Largest batch whose per-sequence speed ``1 / t(B)`` is still >= ``target_tok_s``."""
    weights_s = decode_step_seconds(workload, gpu, 0, calibration)
    per_sequence_s = decode_step_seconds(workload, gpu, 1, calibration) - weights_s
    spare_s = 1.0 / target_tok_s - weights_s
    if spare_s < per_sequence_s:
        return 0
    batch = int(spare_s / per_sequence_s)
    # Guard the float division: the answer must satisfy the inequality it solves.
    while batch > 0 and 1.0 / decode_step_seconds(workload, gpu, batch, calibration) < target_tok_s:
        batch -= 1
    return batch


def workload_for(model: ModelSpec, quant: Quantization, context_tokens: int) -> DecodeWorkload:
    """The decode workload of ``model`` at ``quant`` on one GPU (2 FLOPs per parameter)."""
    return DecodeWorkload(
        weight_bytes=weight_bytes(model, quant),
        kv_bytes_per_token=model.kv_bytes_per_token(),
        flops_per_token=2.0 * model.parameter_count,
        context_tokens=context_tokens,
    )


def gpu_throughput(
    gpu: GpuProfile,
    model: ModelSpec,
    quant: Quantization,
    *,
    target_tok_s: float,
    context_tokens: int,
    calibration: DecodeCalibration | None = None,
) -> GpuThroughput:
    """Users one ``gpu`` serves with ``model`` at ``quant``, each at >= ``target_tok_s``."""
    calibration = calibration or DecodeCalibration()
    request = FitRequest(quant=quant, context=context_tokens, min_context=context_tokens)
    try:
        fit = plan_fit(request, gpu, model)
    except UnsupportedQuantizationError as exc:
        return GpuThroughput(0, 0.0, 0.0, 0.0, 0, "unsupported", str(exc))
    workload = workload_for(model, quant, context_tokens)
    single = 1.0 / decode_step_seconds(workload, gpu, 1, calibration)
    if not fit.fits:
        note = fit.problems[0] if fit.problems else "does not fit"
        return GpuThroughput(0, 0.0, 0.0, single, fit.kv_tokens, "does-not-fit", note)
    by_speed = max_batch_at_speed(workload, gpu, target_tok_s, calibration)
    limits: list[tuple[int, Limit]] = [
        (by_speed, "speed"),
        (fit.kv_tokens // context_tokens, "kv-cache"),
        (default_max_num_seqs(gpu), "max-num-seqs"),
    ]
    users, limit = min(limits, key=lambda pair: pair[0])
    if users == 0:
        note = f"one stream decodes at {single:.0f} tok/s, below the {target_tok_s:g} tok/s target"
        return GpuThroughput(0, 0.0, 0.0, single, fit.kv_tokens, "too-slow", note)
    per_user = 1.0 / decode_step_seconds(workload, gpu, users, calibration)
    return GpuThroughput(users, per_user, users * per_user, single, fit.kv_tokens, limit)
