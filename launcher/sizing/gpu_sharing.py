"""Several models on one GPU: each vLLM gets its share of the memory, or one clear refusal.

    >>> shares = share_gpu([chat, fast], get_gpu("l40s"))     # two ShareClaims
    >>> shares["chat"] + shares["fast"] <= 0.92
    True

Each vLLM on a GPU takes ``total memory x gpu_memory_utilization`` and refuses to start
when less than that is free (``request_memory`` in ``vllm/v1/worker/utils.py``), so the
replicas sharing a GPU must have utilizations that sum to no more than what one would use
alone (:data:`~launcher.sizing.fit.DEFAULT_GPU_MEMORY_UTILIZATION`). Each group needs at
least its weights, overhead, LoRA slots and the KV cache of what it was asked for (one
request of its ``context``, or ``concurrency`` requests of the shortest useful context);
the memory beyond the sum of those needs is split in proportion to them. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from launcher.errors import GpuShareError
from launcher.sizing.fit import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GPU_BLOCK_SIZE,
    FitRequest,
    split_memory,
)
from launcher.sizing.gpus import GpuProfile
from launcher.sizing.memory import to_gib
from launcher.sizing.models import ModelSpec

__all__ = ["ShareClaim", "least_bytes", "share_gpu"]


@dataclass(frozen=True)
class ShareClaim:
    """One group's claim on a shared GPU: its served name, model and fit request."""

    name: str
    model: ModelSpec
    request: FitRequest


def least_bytes(claim: ShareClaim, gpu: GpuProfile) -> int:
    """What the group cannot start without: weights, overhead, LoRA slots and the KV
    cache of its target (whole blocks)."""
    request, model = claim.request, claim.model
    memory = split_memory(request.model_copy(update={"gpu_memory_utilization": 1.0}), gpu, model)
    cap = model.max_position_embeddings
    if request.context is not None:
        tokens = min(request.context, cap)
    else:
        tokens = request.target_concurrency * min(request.min_context, cap)
    blocks = math.ceil(tokens / GPU_BLOCK_SIZE)
    kv = (
        blocks
        * GPU_BLOCK_SIZE
        * model.kv_bytes_per_token(request.kv_dtype, request.tensor_parallel)
    )
    return memory.weights + memory.overhead + memory.lora + kv


def share_gpu(
    claims: Sequence[ShareClaim],
    gpu: GpuProfile,
    usable: float = DEFAULT_GPU_MEMORY_UTILIZATION,
) -> dict[str, float]:
    """Each claim's ``gpu_memory_utilization`` on one ``gpu`` (rounded down to 0.01), or a
    :class:`GpuShareError` that says what each needs and what the GPU has."""
    needs = {claim.name: least_bytes(claim, gpu) for claim in claims}
    total = sum(needs.values())
    budget = gpu.vram_bytes * usable
    if total > budget:
        parts = " + ".join(f"{name} {to_gib(need):.2f}" for name, need in needs.items())
        raise GpuShareError(
            f"{' and '.join(needs)} cannot share one {gpu.key or gpu.name}: they need at least "
            f"{parts} = {to_gib(total):.2f} GiB, {to_gib(budget):.2f} GiB is usable "
            f"({usable} x {gpu.vram_gib:.2f} GiB); give one of them other GPUs, a shorter "
            "context or int4 weights"
        )
    return {name: math.floor(usable * need / total * 100) / 100 for name, need in needs.items()}
