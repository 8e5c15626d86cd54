"""Serving speed of one vLLM replica: a step model calibrated on published measurements.

With continuous batching and chunked prefill, every engine step runs the decode token of each
of the ``B`` running sequences plus the prompt tokens admitted meanwhile: in steady state each
output token brings ``prompt / output`` prompt tokens along. A step of one replica (sizes per
GPU, after the tensor-parallel split) takes::

    t(B) = layers x step_overhead                      # kernel launches, fixed per step
                                                       # (CUDA graphs; more under --eager)
         + max(weights(B), gemm(B))                    # the linear layers: roofline
         + attention(B)                                # KV reads, after the GEMMs
         + B x sequence_overhead                       # per-sequence CPU work (schedule, sample)
         + tensor-parallel all-reduces (2 per layer)

    weights(B)   = weight bytes / (eta x kernel efficiency x bandwidth)
    gemm(B)      = B x (1 + prompt/output) x 2 x params / (mu x dense FLOP/s of the method)
    attention(B) = B x context x KV bytes/token / (eta x bandwidth)

Low batch: the weight reads bind and the speed per user is ~bandwidth / weights. High batch:
the GEMMs (prefill included) bind and grow with the batch, as do the KV reads and the CPU work
per sequence, so total tok/s bends towards a ceiling set by compute, not by a fixed cost per
sequence. Each user decodes at ``1 / t(B)`` tokens/s; the replica produces ``B / t(B)``.

Quantization acts by method, not by bytes alone (``QUANT_KERNELS``): weight-only kernels
(AWQ/GPTQ Marlin, FP8 on Ampere, GPTQ-Int8) read fewer bytes but reach less of the bandwidth
than a 16-bit GEMM and compute in 16 bits; FP8 on Ada/Hopper also doubles the tensor-core rate.

The constants are fitted to ``configs/speed_measurements.yaml`` by
``launcher.sizing.speed_fit``, which also reports the error on sources held out of the fit
(leave-one-source-out) beside the in-sample error. The tensor-parallel all-reduce costs are
textbook values (latency per all-reduce, ring traffic over NVLink or PCIe), not fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.sizing.gpus import GpuProfile
from launcher.sizing.memory import Quantization, weight_bytes
from launcher.sizing.models import ModelSpec

# All-reduce bus bandwidth over PCIe 4.0 x16, GB/s: NCCL rates the link at 24, and four RTX 4090s
# measure 25.7-26 (docs/speed-measurements.md#tensor-parallel-without-nvlink). Not fitted: one
# source has runs over PCIe.
PCIE_GBS = 25.0


@dataclass(frozen=True)
class QuantKernel:
    """How a quantization method's kernels run: share of the bandwidth a weight read reaches
    (relative to a 16-bit GEMM) and the tensor-core rate relative to dense bf16."""

    read_efficiency: float = 1.0
    compute_factor: float = 1.0


# Weight-only int4 (AWQ/GPTQ through Marlin) decodes ~2x faster than 16-bit where bytes alone
# would say ~2.2-3x, int8 less than its 1.6x of bytes: the dequantizing kernels reach ~80% /
# ~90% of the bandwidth a 16-bit GEMM does (docs/speed-measurements.md#quantization-speed).
# FP8 on Ada/Hopper runs W8A8 on FP8 tensor cores (twice the bf16 rate); on Ampere vLLM runs
# FP8 checkpoints weight-only (Marlin).
QUANT_KERNELS: dict[Quantization, QuantKernel] = {
    "bf16": QuantKernel(),
    "fp16": QuantKernel(),
    "awq": QuantKernel(read_efficiency=0.8),
    "gptq": QuantKernel(read_efficiency=0.8),
    "int8": QuantKernel(read_efficiency=0.9),
    "fp8": QuantKernel(compute_factor=2.0),
}
FP8_WEIGHT_ONLY = QuantKernel(read_efficiency=0.85)


def quant_kernel(quant: Quantization, gpu: GpuProfile) -> QuantKernel:
    """The kernel a quantization runs on ``gpu``: FP8 without FP8 tensor cores is weight-only."""
    if quant == "fp8" and not gpu.fp8:
        return FP8_WEIGHT_ONLY
    return QUANT_KERNELS[quant]


@dataclass(frozen=True)
class SpeedCalibration:
    """The step model's constants (module docstring).

    The defaults are ``launcher.sizing.speed_fit.fit`` on the whole measurement table, starting
    from (and held near) ``speed_fit.PRIOR``; a test keeps them in step with the table.
    """

    bandwidth_efficiency: float = 0.734
    compute_efficiency: float = 0.485
    step_overhead_per_layer_s: float = 27.9e-6
    sequence_overhead_s: float = 30.2e-6
    # vLLM before 0.6 spent more CPU per sequence and per step (0.6 overlapped output processing
    # with the GPU step) and reached less of the compute at large batches; only the calibration
    # uses these, to read the older measurements.
    legacy_compute_efficiency: float = 0.378
    legacy_sequence_overhead_s: float = 103e-6
    legacy_step_overhead_per_layer_s: float = 33.1e-6
    # Without CUDA graphs (--enforce-eager) each layer's kernels are launched one by one from
    # Python every step. Read, not fitted: vLLM 0.9.1, Qwen3-14B-AWQ, one A100 80GB, one request
    # holding ~16k tokens decodes at 20.63 ms a token eager, where this model with graphs gives
    # ~11.6 ms: ~225 us more per layer (vllm-project/vllm#20469;
    # docs/speed-measurements.md#eager-no-cuda-graphs).
    eager_step_overhead_per_layer_s: float = 250e-6
    allreduce_latency_nvlink_s: float = 8e-6
    allreduce_latency_pcie_s: float = 25e-6
    # How far the weight reads and the GEMMs overlap: (w^p + g^p)^(1/p); 1 = not at all (a sum),
    # large = fully (the roofline's max). 2 bends where the measured curves bend.
    overlap_power: float = 2.0


@dataclass(frozen=True)
class Workload:
    """What one replica serves: the model at a quantization and TP, and the request shape."""

    model: ModelSpec
    quant: Quantization
    prompt_tokens: int
    output_tokens: int
    tensor_parallel: int = 1
    eager: bool = False  # --enforce-eager: no CUDA graphs, every kernel launched from Python

    @property
    def context_tokens(self) -> int:
        """Average KV tokens a decoding sequence holds: the prompt plus half the reply."""
        return self.prompt_tokens + self.output_tokens // 2

    @property
    def weight_bytes(self) -> int:
        return weight_bytes(self.model, self.quant, self.tensor_parallel)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token(tensor_parallel=self.tensor_parallel)

    @property
    def flops_per_token(self) -> float:
        return 2.0 * self.model.parameter_count / self.tensor_parallel

    @property
    def tokens_per_output_token(self) -> float:
        """Tokens a step computes per output token: itself plus its share of the prompt."""
        return 1.0 + self.prompt_tokens / self.output_tokens


def _allreduce_seconds(
    workload: Workload, gpu: GpuProfile, batch: int, calibration: SpeedCalibration
) -> float:
    tp = workload.tensor_parallel
    if tp == 1:
        return 0.0
    nvlink = gpu.nvlink_gbs is not None
    latency = (
        calibration.allreduce_latency_nvlink_s if nvlink else calibration.allreduce_latency_pcie_s
    )
    link = (gpu.nvlink_gbs or PCIE_GBS) * 1e9
    tokens = batch * workload.tokens_per_output_token
    ring_bytes = 2 * (tp - 1) / tp * tokens * workload.model.hidden_size * 2
    return 2 * workload.model.num_hidden_layers * (latency + ring_bytes / link)


def step_seconds(
    workload: Workload, gpu: GpuProfile, batch: int, calibration: SpeedCalibration | None = None
) -> float:
    """Seconds one engine step of ``batch`` running sequences takes (module docstring)."""
    cal = calibration or SpeedCalibration()
    kernel = quant_kernel(workload.quant, gpu)
    bandwidth = cal.bandwidth_efficiency * gpu.bandwidth_gbs * 1e9
    flops = cal.compute_efficiency * kernel.compute_factor * gpu.bf16_tflops * 1e12
    weights = workload.weight_bytes / (kernel.read_efficiency * bandwidth)
    gemm = batch * workload.tokens_per_output_token * workload.flops_per_token / flops
    attention = batch * workload.context_tokens * workload.kv_bytes_per_token / bandwidth
    per_layer = (
        cal.eager_step_overhead_per_layer_s if workload.eager else cal.step_overhead_per_layer_s
    )
    return (
        workload.model.num_hidden_layers * per_layer
        + (weights**cal.overlap_power + gemm**cal.overlap_power) ** (1 / cal.overlap_power)
        + attention
        + batch * cal.sequence_overhead_s
        + _allreduce_seconds(workload, gpu, batch, cal)
    )


@dataclass(frozen=True)
class Speed:
    """Speeds at one batch: per user (decode), the replica's total, one stream alone."""

    batch: int
    per_user_tok_s: float
    total_tok_s: float
    single_stream_tok_s: float
    prefill_s: float


def speed_at(
    workload: Workload, gpu: GpuProfile, batch: int, calibration: SpeedCalibration | None = None
) -> Speed:
    """Per-user and total output tok/s at ``batch``; ``prefill_s``: one prompt's compute time."""
    cal = calibration or SpeedCalibration()
    step = step_seconds(workload, gpu, batch, cal)
    kernel = quant_kernel(workload.quant, gpu)
    flops = cal.compute_efficiency * kernel.compute_factor * gpu.bf16_tflops * 1e12
    return Speed(
        batch=batch,
        per_user_tok_s=1.0 / step,
        total_tok_s=batch / step,
        single_stream_tok_s=1.0 / step_seconds(workload, gpu, 1, cal),
        prefill_s=workload.prompt_tokens * workload.flops_per_token / flops,
    )


def max_batch_at_speed(
    workload: Workload,
    gpu: GpuProfile,
    target_tok_s: float,
    calibration: SpeedCalibration | None = None,
    limit: int = 4096,
) -> int:
    """Largest batch (<= ``limit``) whose per-user speed ``1 / t(B)`` is >= ``target_tok_s``.

    ``t(B)`` grows with ``B``, so a bisection finds it; 0 when one stream is already slower.
    """
    cal = calibration or SpeedCalibration()
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if 1.0 / step_seconds(workload, gpu, middle, cal) >= target_tok_s:
            low = middle
        else:
            high = middle - 1
    return low
