"""Which kernel runs a quantization on a GPU, and the speed the planner gives it there.

FP8 on a GPU without FP8 tensor cores (Ampere: A100, A10, RTX 3090, A40) is not refused: vLLM
runs FP8 checkpoints, and ``--quantization fp8``, there as weight-only W8A16 through its FP8
Marlin kernel (weights stored in FP8, dequantized to 16-bit inside the matrix multiply;
activations stay 16-bit). Memory is FP8's (one byte per quantized weight); speed is not W8A8's.

    >>> from launcher.sizing.gpus import get_gpu
    >>> fp8_kernel(get_gpu("a100-80gb")), fp8_kernel(get_gpu("h100-sxm"))
    ('w8a16-marlin', 'w8a8')

The speed of the weight-only kernel is the 16-bit step less the time it saves reading half
the weights: at batch 1 (memory-bound) the step is :data:`FP8_MARLIN_DECODE_SPEEDUP` times
faster than 16-bit; the time saved per step stays the same at every batch (the weights are
read once per step), so the relative gain fades as the batch grows and compute binds, where
W8A16 multiplies in 16-bit like the unquantized model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from launcher.sizing.gpus import GpuProfile
from launcher.sizing.speed import (
    Speed,
    SpeedCalibration,
    Workload,
    max_batch_at_speed,
    speed_at,
    step_seconds,
)

Fp8Kernel = Literal["w8a8", "w8a16-marlin", "none"]

# FP8 Marlin's end-to-end decode speed-up over 16-bit in memory-bound (low-batch) decoding:
# "up to 1.5x" on the A100 (neuralmagic/nm-vllm#331, FP8 Marlin's first pull request, with its
# A100 end-to-end latency chart); vLLM's merged pull request (vllm-project/vllm#5975) says "up to
# 2x" with an A10 chart added, the A10 having a third of the A100's bandwidth. The planner takes
# the A100 figure for every Ampere GPU: the lower one, so it never promises the A10's best case.
FP8_MARLIN_DECODE_SPEEDUP = 1.5


def fp8_kernel(gpu: GpuProfile) -> Fp8Kernel:
    """How vLLM runs FP8 weights on ``gpu``: W8A8 on FP8 tensor cores (Ada, Hopper and newer),
    weight-only through FP8 Marlin on Ampere, not at all on older GPUs."""
    if gpu.supports_fp8:
        return "w8a8"
    return "w8a16-marlin" if gpu.supports_marlin else "none"


def is_weight_only(workload: Workload, gpu: GpuProfile) -> bool:
    """True when ``workload`` is FP8 and ``gpu`` runs it weight-only (FP8 Marlin)."""
    return workload.quant == "fp8" and fp8_kernel(gpu) == "w8a16-marlin"


def _sixteen_bit(workload: Workload) -> Workload:
    return replace(workload, quant="bf16")


def weight_only_saving_s(
    workload: Workload, gpu: GpuProfile, calibration: SpeedCalibration | None = None
) -> float:
    """Seconds per step FP8 Marlin saves against 16-bit: (1 - 1/speed-up) x the batch-1 step."""
    one = step_seconds(_sixteen_bit(workload), gpu, 1, calibration)
    return (1.0 - 1.0 / FP8_MARLIN_DECODE_SPEEDUP) * one


def planned_step_seconds(
    workload: Workload, gpu: GpuProfile, batch: int, calibration: SpeedCalibration | None = None
) -> float:
    """The step time the planner uses: the speed model's, or FP8 Marlin's on Ampere."""
    if not is_weight_only(workload, gpu):
        return step_seconds(workload, gpu, batch, calibration)
    sixteen = step_seconds(_sixteen_bit(workload), gpu, batch, calibration)
    return sixteen - weight_only_saving_s(workload, gpu, calibration)


def planned_speed_at(
    workload: Workload, gpu: GpuProfile, batch: int, calibration: SpeedCalibration | None = None
) -> Speed:
    """:func:`launcher.sizing.speed.speed_at`, with FP8 Marlin's step on Ampere."""
    speed = speed_at(workload, gpu, batch, calibration)
    if not is_weight_only(workload, gpu):
        return speed
    step = planned_step_seconds(workload, gpu, batch, calibration)
    return Speed(
        batch=batch,
        per_user_tok_s=1.0 / step,
        total_tok_s=batch / step,
        single_stream_tok_s=1.0 / planned_step_seconds(workload, gpu, 1, calibration),
        prefill_s=speed.prefill_s,
    )


def planned_max_batch(
    workload: Workload,
    gpu: GpuProfile,
    target_tok_s: float,
    calibration: SpeedCalibration | None = None,
    limit: int = 4096,
) -> int:
    """Largest batch (<= ``limit``) whose planned per-user speed is >= ``target_tok_s``.

    FP8 Marlin's step is the 16-bit step less a constant ``s``, so ``1 / (t16 - s) >= T`` is
    ``1 / t16 >= 1 / (1/T + s)``: the speed model's own search at that target."""
    if not is_weight_only(workload, gpu):
        return max_batch_at_speed(workload, gpu, target_tok_s, calibration, limit)
    saving = weight_only_saving_s(workload, gpu, calibration)
    target = 1.0 / (1.0 / target_tok_s + saving)
    return max_batch_at_speed(_sixteen_bit(workload), gpu, target, calibration, limit)


def fp8_weight_only_note(gpu_keys: list[str]) -> str:
    """The planner's line for FP8 planned weight-only on ``gpu_keys`` (no FP8 tensor cores)."""
    return (
        f"FP8 on {', '.join(gpu_keys)}: weight-only (FP8 Marlin, W8A16; no FP8 tensor cores), "
        f"planned at {FP8_MARLIN_DECODE_SPEEDUP:g}x 16-bit decode at batch 1, less as the batch "
        "grows"
    )
