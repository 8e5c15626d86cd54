"""How many users one replica (1, 2, 4 or 8 GPUs) serves at a per-user speed.

The speed of a batch is :mod:`launcher.sizing.speed`'s step model (bandwidth-bound at low
batch, compute- and scheduling-bound at high batch, prefill included, calibrated on the
published measurements in ``configs/speed_measurements.yaml``). The users a replica sustains is
the largest batch whose per-user speed stays at or above the target, capped by the fit
solver's KV capacity (``kv_tokens // context``) and vLLM's ``max_num_seqs``.

With the same constants the model lands inside every row of the cost guide's throughput table
(docs/gpus-and-costs.md#throughput-table), each row taken at its own per-user speed (mid total / mid
users: 30-40 tok/s) with the guide's 200-token replies after 500-token prompts, and with the
configuration the row must mean: 7B fp16 on RTX 4090 / L40S / H100 and 13B fp16 on an H100 as
stated; 13B on an L40S in int4 (AWQ), because 26 GB of fp16 weights over 864 GB/s cannot reach 40
tok/s even for one stream; 70B in fp8 on an H100 and on an H200 (its 141 GB of fp16 weights fit
neither).

    >>> users_per_gpu("rtx4090", "llama-3.1-8b", "awq")
    23
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from launcher.errors import UnsupportedParallelismError, UnsupportedQuantizationError
from launcher.sizing.fit import FitRequest, default_max_num_seqs, plan_fit
from launcher.sizing.gpus import GpuProfile, get_gpu
from launcher.sizing.memory import Quantization
from launcher.sizing.models import ModelSpec, load_model
from launcher.sizing.quant_kernels import planned_max_batch, planned_step_seconds
from launcher.sizing.speed import SpeedCalibration, Workload, max_batch_at_speed, step_seconds

Limit = Literal["speed", "kv-cache", "max-num-seqs", "too-slow", "does-not-fit", "unsupported"]

# The guide's request: 200 output tokens (docs/gpus-and-costs.md#usage-model); the prompt is ours to
# state.
DEFAULT_OUTPUT_TOKENS = 200
DEFAULT_PROMPT_TOKENS = 500
DEFAULT_USER_TOK_S = 40.0

# Names kept from the decode-only model: the step model is the decode step now.
DecodeCalibration = SpeedCalibration
decode_step_seconds = step_seconds

__all__ = [
    "DecodeCalibration",
    "GpuThroughput",
    "Limit",
    "decode_step_seconds",
    "gpu_throughput",
    "max_batch_at_speed",
    "users_per_gpu",
    "workload_for",
]


@dataclass(frozen=True)
class GpuThroughput:
    """Concurrent users one replica sustains at ``target_tok_s``, and why not more.

    ``users``/``total_tok_s`` are per replica (``tensor_parallel`` GPUs)."""

    users: int
    per_user_tok_s: float
    total_tok_s: float
    single_stream_tok_s: float
    kv_tokens: int
    limited_by: Limit
    note: str = ""
    tensor_parallel: int = 1

    @property
    def users_per_gpu(self) -> float:
        return self.users / self.tensor_parallel


def workload_for(
    model: ModelSpec,
    quant: Quantization,
    context_tokens: int | None = None,
    *,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    tensor_parallel: int = 1,
    eager: bool = False,
) -> Workload:
    """The workload of ``model`` at ``quant``; ``context_tokens`` (prompt + half the reply),
    when given, sets the prompt for ``output_tokens``; ``eager``: run with --enforce-eager."""
    if context_tokens is not None:
        prompt_tokens = max(1, context_tokens - output_tokens // 2)
    return Workload(model, quant, prompt_tokens, output_tokens, tensor_parallel, eager)


def gpu_throughput(
    gpu: GpuProfile,
    model: ModelSpec,
    quant: Quantization,
    *,
    target_tok_s: float,
    context_tokens: int | None = None,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    tensor_parallel: int = 1,
    context: int | None = None,
    calibration: SpeedCalibration | None = None,
    eager: bool = False,
) -> GpuThroughput:
    """Users one replica of ``tensor_parallel`` ``gpu``s serves, each at >= ``target_tok_s``.

    ``context``: the max_model_len the replica must offer (default: the workload's average
    context); the KV cache is shared by the users at the workload's average context.
    ``eager``: the replica runs with --enforce-eager (no CUDA graphs: every step pays the
    kernel launches, ``SpeedCalibration.eager_step_overhead_per_layer_s``)."""
    workload = workload_for(
        model,
        quant,
        context_tokens,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        tensor_parallel=tensor_parallel,
        eager=eager,
    )
    average = workload.context_tokens
    offered = max(average, context_tokens or 0, context or 0)
    request = FitRequest(
        quant=quant, context=offered, min_context=offered, tensor_parallel=tensor_parallel
    )
    tp = tensor_parallel
    try:
        fit = plan_fit(request, gpu, model)
    except (UnsupportedQuantizationError, UnsupportedParallelismError) as exc:
        return GpuThroughput(0, 0.0, 0.0, 0.0, 0, "unsupported", str(exc), tp)
    single = 1.0 / planned_step_seconds(workload, gpu, 1, calibration)
    if not fit.fits:
        note = fit.problems[0] if fit.problems else "does not fit"
        return GpuThroughput(0, 0.0, 0.0, single, fit.kv_tokens, "does-not-fit", note, tp)
    seqs = default_max_num_seqs(gpu)
    by_speed = planned_max_batch(workload, gpu, target_tok_s, calibration, limit=seqs + 1)
    limits: list[tuple[int, Limit]] = [
        (by_speed, "speed"),
        (fit.kv_tokens // average, "kv-cache"),
        (seqs, "max-num-seqs"),
    ]
    users, limit = min(limits, key=lambda pair: pair[0])
    if users == 0:
        note = f"one stream decodes at {single:.0f} tok/s, below the {target_tok_s:g} tok/s target"
        return GpuThroughput(0, 0.0, 0.0, single, fit.kv_tokens, "too-slow", note, tp)
    per_user = 1.0 / planned_step_seconds(workload, gpu, users, calibration)
    return GpuThroughput(
        users, per_user, users * per_user, single, fit.kv_tokens, limit, tensor_parallel=tp
    )


def users_per_gpu(
    gpu: str | GpuProfile,
    model: str | ModelSpec,
    quant: Quantization,
    *,
    tensor_parallel: int = 1,
    user_tok_s: float = DEFAULT_USER_TOK_S,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> int:
    """Concurrent users one replica (``tensor_parallel`` GPUs) of ``model`` at ``quant`` serves
    at ``user_tok_s`` each, with the planner's default workload; 0 when it cannot serve.

    The number ``vkit capacity`` plans with, for renderers that size autoscaling targets."""
    profile = gpu if isinstance(gpu, GpuProfile) else get_gpu(gpu)
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    return gpu_throughput(
        profile,
        spec,
        quant,
        target_tok_s=user_tok_s,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        tensor_parallel=tensor_parallel,
    ).users
