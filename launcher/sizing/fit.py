"""The fit solver: will a model run on a GPU (or this CPU), and with which vLLM settings?

    >>> plan = plan_fit(FitRequest(quant="awq", concurrency=16), get_gpu("rtx4090"),
    ...                 load_model("llama-3.1-8b"))
    >>> plan.fits, plan.max_model_len
    (True, 6144)

Pure: plain data in, a :class:`FitPlan` out. The memory model is docs/memory.md#what-vllm-subtracts:
KV memory = VRAM x gpu_memory_utilization - weights - overhead - LoRA slots (when the request
has :class:`~launcher.sizing.lora.LoraSettings`); tokens = KV / bytes per token. In CPU mode
(:class:`CpuTarget`) the KV budget is ``VLLM_CPU_KVCACHE_SPACE`` GiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from launcher.errors import UnsupportedParallelismError, UnsupportedQuantizationError
from launcher.sizing.gpus import GpuProfile
from launcher.sizing.lora import LoraSettings, lora_bytes
from launcher.sizing.memory import (
    GIB,
    Quantization,
    kv_tokens,
    overhead_bytes,
    to_gib,
    weight_bytes,
)
from launcher.sizing.models import KvDtype, ModelSpec
from launcher.sizing.quant_kernels import fp8_kernel, planned_speed_at
from launcher.sizing.queue_caps import DEFAULT_TTFT_TARGET_S, check_ttft_target, size_queue_caps
from launcher.sizing.speed import Speed, Workload

DEFAULT_GPU_MEMORY_UTILIZATION = 0.92  # vLLM's default (docs/memory.md#defaults)
GPU_BLOCK_SIZE = 16  # vLLM's default KV block on CUDA
CPU_BLOCK_SIZE = 128  # vLLM's CPU platform default (vllm/platforms/cpu.py, 0.32)


class CpuTarget(BaseModel):
    """A CPU replica: the KV cache is ``VLLM_CPU_KVCACHE_SPACE`` GiB of RAM (an integer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kv_cache_space_gib: int = Field(default=1, ge=1)
    name: str = "cpu"


class FitRequest(BaseModel):
    """What the user asks for: a target ``context`` or ``concurrency`` (default: 1 request)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quant: Quantization = "bf16"
    kv_dtype: KvDtype = "auto"
    tensor_parallel: int = Field(default=1, ge=1, le=8)
    gpu_memory_utilization: float = Field(default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1)
    context: int | None = Field(default=None, ge=16, description="target max_model_len")
    concurrency: int | None = Field(default=None, ge=1, description="target concurrent requests")
    max_num_seqs: int | None = Field(default=None, ge=1)
    min_context: int = Field(default=2048, ge=16, description="shortest useful max_model_len")
    prompt_tokens: int = Field(default=500, ge=1, description="prompt tokens, for the speed")
    output_tokens: int = Field(default=200, ge=1, description="output tokens, for the speed")
    lora: LoraSettings | None = Field(default=None, description="adapter slots on each GPU")
    eager: bool = Field(
        default=False, description="--enforce-eager (no CUDA graphs), for the speed"
    )
    ttft_target_s: float = Field(
        default=DEFAULT_TTFT_TARGET_S,
        gt=0,
        description="time-to-first-token target: sizes vLLM's admission caps",
    )

    @model_validator(mode="after")
    def _one_target(self) -> FitRequest:
        if self.context is not None and self.concurrency is not None:
            raise ValueError("give either a target context or a target concurrency, not both")
        return self

    @property
    def target_concurrency(self) -> int:
        return self.concurrency or 1


class FitPlan(BaseModel):
    """The solver's answer: memory split, chosen vLLM settings, speed estimate, verdict."""

    model_config = ConfigDict(frozen=True)

    model: str
    target: str
    cpu: bool
    quant: Quantization
    kv_dtype: KvDtype
    tensor_parallel: int
    gpu_memory_utilization: float | None
    vram_gib: float | None
    budget_gib: float
    weights_gib: float
    overhead_gib: float
    lora_gib: float = 0.0
    kv_gib: float
    kv_bytes_per_token: int
    block_size: int
    kv_tokens: int
    max_model_len: int
    max_num_seqs: int
    concurrency_at_max_len: int
    single_stream_tok_s: float | None = None
    aggregate_tok_s: float | None = None
    aggregate_concurrency: int = 0
    fp8_weight_only: bool = Field(
        default=False, description="FP8 weights run weight-only (FP8 Marlin): a GPU without FP8"
    )
    prompt_tokens: int = 500
    output_tokens: int = 200
    ttft_target_s: float = DEFAULT_TTFT_TARGET_S
    prefill_s: float | None = Field(
        default=None, description="one prompt's prefill on the GPU (the speed model)"
    )
    step_s: float | None = Field(default=None, description="one engine step at the batch")
    max_num_queued_tokens: int | None = Field(
        default=None, description="vLLM's admission cap for the TTFT target (None: no GPU)"
    )
    max_num_queued_reqs: int | None = None
    fits: bool
    problems: list[str] = Field(default_factory=list)
    ways_out: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class MemorySplit:
    """Per-GPU bytes: what the budget holds and what is left for the KV cache."""

    budget: int
    weights: int
    overhead: int
    kv: int
    block_size: int
    lora: int = 0


def round_down_context(tokens: int) -> int:
    """Largest round length <= tokens: a multiple of 1024, or a power of two below 1024."""
    if tokens >= 1024:
        return tokens // 1024 * 1024
    if tokens < 1:
        return 0
    return 1 << (tokens.bit_length() - 1)


def default_max_num_seqs(target: GpuProfile | CpuTarget) -> int:
    """vLLM's API-server default: 256; 1024 on >= 70 GiB non-A100 GPUs; 128 on CPU."""
    if isinstance(target, CpuTarget):
        return 128
    if target.vram_bytes >= 70 * GIB and target.arch != "ampere":
        return 1024
    return 256


def check_quantization(request: FitRequest, target: GpuProfile | CpuTarget) -> None:
    """Refuse what the hardware cannot run: FP8 needs Ampere (weight-only, FP8 Marlin) or
    newer (docs/gpus-and-costs.md#quantization-support)."""
    if isinstance(target, CpuTarget):
        if request.quant in ("fp8", "awq", "gptq"):
            raise UnsupportedQuantizationError(
                f"quantization {request.quant!r} is not supported by the CPU engine; use bf16"
            )
        return
    if request.quant == "fp8" and fp8_kernel(target) == "none":
        raise UnsupportedQuantizationError(
            f"FP8 needs an Ampere GPU or newer (weight-only FP8 Marlin on Ampere, W8A8 on Ada and "
            f"Hopper); {target.key or target.name} ({target.arch}) has neither: use bf16 instead"
        )


def check_tensor_parallel(model: ModelSpec, target: GpuProfile | CpuTarget, size: int) -> None:
    """Refuse a TP size vLLM cannot run: more GPUs than one node holds, or one that does not
    divide the attention heads (and the KV heads, unless it is a multiple of them)."""
    if size == 1:
        return
    if isinstance(target, CpuTarget):
        raise UnsupportedParallelismError("the CPU engine runs one process: tensor parallel 1")
    if size > target.per_node:
        raise UnsupportedParallelismError(
            f"tensor parallel {size} is larger than one node of {target.key or target.name} "
            f"({target.per_node} GPUs): use at most {target.per_node}, or more replicas"
        )
    heads, kv = model.num_attention_heads, model.num_key_value_heads
    if heads % size or (kv % size and size % kv):
        raise UnsupportedParallelismError(
            f"tensor parallel {size} does not divide {model.name}'s {heads} attention / "
            f"{kv} KV heads"
        )


def split_memory(
    request: FitRequest, target: GpuProfile | CpuTarget, model: ModelSpec
) -> MemorySplit:
    """KV bytes per GPU = VRAM x utilization - weights - overhead - LoRA slots; on CPU, the
    KV space (adapters live beside it, in the process's own memory)."""
    weights = weight_bytes(model, request.quant, request.tensor_parallel)
    if isinstance(target, CpuTarget):
        kv = target.kv_cache_space_gib * GIB
        return MemorySplit(budget=kv, weights=weights, overhead=0, kv=kv, block_size=CPU_BLOCK_SIZE)
    budget = int(target.vram_bytes * request.gpu_memory_utilization)
    overhead = overhead_bytes(model)
    lora = 0 if request.lora is None else lora_bytes(model, request.lora, request.tensor_parallel)
    return MemorySplit(
        budget=budget,
        weights=weights,
        overhead=overhead,
        kv=budget - weights - overhead - lora,
        block_size=GPU_BLOCK_SIZE,
        lora=lora,
    )


def choose_max_model_len(request: FitRequest, model: ModelSpec, tokens: int) -> int:
    """The target context if it fits, else the largest round value giving the concurrency."""
    cap = model.max_position_embeddings
    if request.context is not None:
        wanted = min(request.context, cap)
        return wanted if tokens >= wanted else min(cap, round_down_context(tokens))
    per_request = tokens // request.target_concurrency
    return cap if per_request >= cap else round_down_context(per_request)


def find_problems(
    request: FitRequest, model: ModelSpec, memory: MemorySplit, tokens: int, max_len: int
) -> list[str]:
    """Why the plan does not fit, in numbers; empty when it fits."""
    if memory.kv <= 0:
        lora = f", LoRA slots ({to_gib(memory.lora):.2f} GiB)" if memory.lora else ""
        return [
            f"weights ({to_gib(memory.weights):.2f} GiB){lora} and overhead "
            f"({to_gib(memory.overhead):.2f} GiB) exceed the {to_gib(memory.budget):.2f} GiB "
            "budget: no memory is left for the KV cache"
        ]
    problems = []
    cap = model.max_position_embeddings
    if request.context is not None and request.context > cap:
        problems.append(f"context {request.context} is above the model's limit ({cap})")
    elif request.context is not None and tokens < request.context:
        need = request.context * model.kv_bytes_per_token(request.kv_dtype, request.tensor_parallel)
        problems.append(
            f"one request of {request.context} tokens needs {to_gib(need):.2f} GiB of KV cache; "
            f"{to_gib(memory.kv):.2f} GiB is left ({tokens} tokens)"
        )
    floor = min(request.min_context, cap)
    if request.context is None and max_len < floor:
        problems.append(
            f"{request.target_concurrency} concurrent request(s) get only {max_len} tokens each "
            f"(KV cache: {tokens} tokens), below the useful minimum of {floor}"
        )
    return problems


def _solve(request: FitRequest, target: GpuProfile | CpuTarget, model: ModelSpec) -> FitPlan:
    per_token = model.kv_bytes_per_token(request.kv_dtype, request.tensor_parallel)
    memory = split_memory(request, target, model)
    tokens = kv_tokens(memory.kv, per_token, memory.block_size)
    max_len = choose_max_model_len(request, model, tokens)
    problems = find_problems(request, model, memory, tokens, max_len)
    # requests of the stated size (prompt + output) the KV cache holds whole: the batch cap
    typical_fit = tokens // (request.prompt_tokens + request.output_tokens)
    seqs = request.max_num_seqs or min(
        default_max_num_seqs(target), max(request.target_concurrency, typical_fit, 1)
    )
    gpu = target if isinstance(target, GpuProfile) else None
    speed = None
    if gpu is not None and tokens > 0:
        workload = Workload(
            model,
            request.quant,
            request.prompt_tokens,
            request.output_tokens,
            request.tensor_parallel,
            eager=request.eager,
        )
        batch = max(1, min(request.target_concurrency, seqs, typical_fit))
        speed = planned_speed_at(workload, gpu, batch)
    return FitPlan(
        model=model.name,
        target=(gpu.key or gpu.name) if gpu else target.name,
        cpu=gpu is None,
        quant=request.quant,
        kv_dtype=request.kv_dtype,
        tensor_parallel=request.tensor_parallel,
        gpu_memory_utilization=request.gpu_memory_utilization if gpu else None,
        vram_gib=gpu.vram_gib if gpu else None,
        budget_gib=round(to_gib(memory.budget), 2),
        weights_gib=round(to_gib(memory.weights), 2),
        overhead_gib=round(to_gib(memory.overhead), 2),
        lora_gib=round(to_gib(memory.lora), 2),
        kv_gib=round(to_gib(max(memory.kv, 0)), 2),
        kv_bytes_per_token=per_token,
        block_size=memory.block_size,
        kv_tokens=tokens,
        max_model_len=max_len,
        max_num_seqs=seqs,
        concurrency_at_max_len=tokens // max_len if max_len else 0,
        single_stream_tok_s=round(speed.single_stream_tok_s, 1) if speed else None,
        aggregate_tok_s=round(speed.total_tok_s, 1) if speed else None,
        aggregate_concurrency=speed.batch if speed else 0,
        fp8_weight_only=gpu is not None
        and request.quant == "fp8"
        and fp8_kernel(gpu) == "w8a16-marlin",
        prompt_tokens=request.prompt_tokens,
        output_tokens=request.output_tokens,
        **_admission(request, seqs, speed),
        fits=not problems,
        problems=problems,
    )


def _admission(request: FitRequest, seqs: int, speed: Speed | None) -> dict[str, Any]:
    """The plan's admission fields: vLLM's queue caps for the TTFT target
    (:mod:`launcher.sizing.queue_caps`), from the speed model's prefill and step."""
    fields: dict[str, Any] = {"ttft_target_s": request.ttft_target_s}
    if speed is None:
        return fields
    step = 1.0 / speed.per_user_tok_s
    caps = size_queue_caps(
        prompt_tokens=request.prompt_tokens,
        prefill_s=speed.prefill_s,
        step_s=step,
        max_num_seqs=seqs,
        ttft_target_s=request.ttft_target_s,
    )
    fields.update(prefill_s=speed.prefill_s, step_s=step)
    if caps is not None:
        fields.update(
            max_num_queued_tokens=caps.max_num_queued_tokens,
            max_num_queued_reqs=caps.max_num_queued_reqs,
        )
    return fields


def plan_fit(
    request: FitRequest,
    gpu: GpuProfile | CpuTarget,
    model: ModelSpec,
    alternatives: tuple[GpuProfile, ...] = (),
) -> FitPlan:
    """Solve the fit; when it does not fit, list concrete ways out (``alternatives``: GPUs).
    A time-to-first-token target that one prompt alone exceeds leaves the plan without
    admission caps; :func:`check_plan_ttft` refuses it (``vkit plan``, ``vkit launch``)."""
    check_quantization(request, gpu)
    check_tensor_parallel(model, gpu, request.tensor_parallel)
    plan = _solve(request, gpu, model)
    if plan.fits or isinstance(gpu, CpuTarget):
        return plan
    return plan.model_copy(update={"ways_out": suggest_ways_out(request, gpu, model, alternatives)})


def check_plan_ttft(plan: FitPlan) -> None:
    """Refuse (:class:`~launcher.sizing.queue_caps.TtftTargetUnreachable`, one line) a plan
    whose time-to-first-token target one prompt alone exceeds; a plan without a speed
    estimate (CPU) has nothing to check."""
    if plan.prefill_s is None or plan.step_s is None:
        return
    check_ttft_target(
        target=plan.target,
        prompt_tokens=plan.prompt_tokens,
        prefill_s=plan.prefill_s,
        step_s=plan.step_s,
        ttft_target_s=plan.ttft_target_s,
    )


def _describe(plan: FitPlan) -> str:
    return f"max_model_len {plan.max_model_len}, KV {plan.kv_gib:.2f} GiB = {plan.kv_tokens} tokens"


def suggest_ways_out(
    request: FitRequest,
    gpu: GpuProfile,
    model: ModelSpec,
    alternatives: tuple[GpuProfile, ...] = (),
) -> list[str]:
    """Alternatives that do fit: a shorter context, int4, FP8 KV, TP=2, a larger GPU."""
    ways: list[str] = []
    base = _solve(request, gpu, model)
    if request.context is not None and base.max_model_len >= request.min_context:
        ways.append(f"serve a shorter context: --max-model-len {base.max_model_len}")
    tries: list[tuple[str, FitRequest]] = []
    if request.quant in ("bf16", "fp16") and fp8_kernel(gpu) != "none":
        tries.append(("FP8 weights (--quant fp8)", request.model_copy(update={"quant": "fp8"})))
    if request.quant not in ("awq", "gptq"):
        tries.append(("int4 weights (--quant awq)", request.model_copy(update={"quant": "awq"})))
    if request.kv_dtype == "auto":
        tries.append(
            ("FP8 KV cache (--kv-cache-dtype fp8)", request.model_copy(update={"kv_dtype": "fp8"}))
        )
    if request.tensor_parallel == 1 and model.num_attention_heads % 2 == 0:
        tries.append(
            (
                "two GPUs (--tensor-parallel-size 2)",
                request.model_copy(update={"tensor_parallel": 2}),
            )
        )
    for label, changed in tries:
        plan = _solve(changed, gpu, model)
        if plan.fits:
            ways.append(f"{label}: {_describe(plan)}")
    for other in sorted(alternatives, key=lambda g: g.vram_bytes):
        if other.vram_bytes <= gpu.vram_bytes:
            continue
        plan = _solve(request, other, model)
        if plan.fits:
            ways.append(f"a larger GPU (--gpu {other.key}): {_describe(plan)}")
            break
    if not ways:
        ways.append(
            "none of int4, FP8 KV, TP=2 or a larger single GPU is enough: "
            "use more GPUs (TP=4/8) or a smaller model"
        )
    return ways
