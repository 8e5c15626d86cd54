"""Serving speed of one vLLM replica: a step model calibrated on published measurements.

With continuous batching and chunked prefill, every engine step runs the decode token of each
of the ``B`` running sequences plus the prompt tokens admitted meanwhile: in steady state each
output token brings ``prompt / output`` prompt tokens along. A step of one replica (sizes per
GPU, after the tensor-parallel split) takes::

    t(B) = layers x step_overhead                           # kernel launches, scheduling
         + max(memory(B), compute(B))                       # roofline: whichever binds
         + B x (seq_overhead + layers x seq_layer_overhead) # per-sequence scheduling work
         + tensor-parallel all-reduces (2 per layer)

    memory(B)  = (weights + B x context x KV bytes/token) / (eta x bandwidth)
    compute(B) = B x (1 + prompt/output) x 2 x params / (mu x dense bf16 FLOP/s)

Low batch: the weight reads bind and the speed per user is ~bandwidth / weights. High batch:
compute (prefill included) and the per-sequence cost bind, so total tok/s bends towards a
ceiling instead of growing with the batch. Each user decodes at ``1 / t(B)`` tokens/s; the
replica produces ``B / t(B)``.

The constants are fitted to the published measurements in ``configs/speed_measurements.yaml``
(every point within 25% at its own workload, checked by a test) while keeping the cost guide's
throughput table (docs/gpus-and-costs.md#throughput-table) inside its ranges. The tensor-parallel
all-reduce costs are textbook values (latency per all-reduce, ring traffic over NVLink or PCIe), not
fitted: no published TP measurement is in the table yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.sizing.gpus import GpuProfile
from launcher.sizing.memory import Quantization, weight_bytes
from launcher.sizing.models import ModelSpec

PCIE_GBS = 25.0  # effective PCIe 4.0 x16 bandwidth for all-reduce traffic, GB/s


@dataclass(frozen=True)
class SpeedCalibration:
    """The step model's constants (module docstring). Defaults: fitted, see the table."""

    bandwidth_efficiency: float = 0.85
    compute_efficiency: float = 0.6
    step_overhead_per_layer_s: float = 30e-6
    sequence_overhead_s: float = 0.2e-3
    sequence_overhead_per_layer_s: float = 8e-6
    allreduce_latency_nvlink_s: float = 8e-6
    allreduce_latency_pcie_s: float = 25e-6


@dataclass(frozen=True)
class Workload:
    """What one replica serves: the model at a quantization and TP, and the request shape."""

    model: ModelSpec
    quant: Quantization
    prompt_tokens: int
    output_tokens: int
    tensor_parallel: int = 1

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
    layers = workload.model.num_hidden_layers
    bandwidth = cal.bandwidth_efficiency * gpu.bandwidth_gbs * 1e9
    flops = cal.compute_efficiency * gpu.bf16_tflops * 1e12
    memory = (
        workload.weight_bytes + batch * workload.context_tokens * workload.kv_bytes_per_token
    ) / bandwidth
    compute = batch * workload.tokens_per_output_token * workload.flops_per_token / flops
    per_sequence = cal.sequence_overhead_s + layers * cal.sequence_overhead_per_layer_s
    return (
        layers * cal.step_overhead_per_layer_s
        + max(memory, compute)
        + batch * per_sequence
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
    flops = cal.compute_efficiency * gpu.bf16_tflops * 1e12
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
