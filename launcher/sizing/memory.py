"""Byte math of a vLLM replica: weights by quantization, start-up overhead, KV tokens.

All sizes are bytes unless a name ends in ``_gib`` (GiB = 2**30 bytes). Sources are
docs/memory.md#what-vllm-subtracts (how vLLM sizes its KV cache) and the way vLLM loads quantized
checkpoints: AWQ/GPTQ/FP8/INT8 quantize the per-layer linear projections only; the
embeddings, the lm_head and the norms stay in 16-bit.
"""

from __future__ import annotations

from typing import Literal

from launcher.sizing.models import ModelSpec

GIB = 1024**3

Quantization = Literal["bf16", "fp16", "fp8", "int8", "awq", "gptq"]

# Bytes per quantized linear weight.  INT4 (AWQ/GPTQ, group size 128) packs two weights
# per byte and adds per group a 16-bit scale and a packed 4-bit zero point:
# (2 + 0.5) bytes / 128 weights = 0.0195 B/param on top of 0.5.
_INT4_GROUP_SIZE = 128
_INT4_BYTES = 0.5 + (2 + 0.5) / _INT4_GROUP_SIZE
LINEAR_BYTES_PER_PARAM: dict[Quantization, float] = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "awq": _INT4_BYTES,
    "gptq": _INT4_BYTES,
}
UNQUANTIZED_BYTES_PER_PARAM = 2.0  # embeddings, lm_head, norms, biases

# Start-up overhead (activation peak + non-torch memory + CUDA graphs), what vLLM leaves beside
# weights and KV (docs/memory.md#what-vllm-subtracts): vLLM's own documented start of Qwen3-4B on
# an L4 leaves 0.88 GiB (22.05 GiB x 0.9 - 7.49 GiB of weights - 11.47 GiB of KV). Modelled as
# 0.6 GiB + 0.07 GiB per billion parameters (the activation peak grows with the layer widths),
# clamped to 0.75-2.5 GiB.
OVERHEAD_BASE_GIB = 0.6
OVERHEAD_PER_BILLION_GIB = 0.07
OVERHEAD_MIN_GIB = 0.75
OVERHEAD_MAX_GIB = 2.5


def weight_bytes(model: ModelSpec, quant: Quantization, tensor_parallel: int = 1) -> int:
    """Bytes of weights each GPU loads (linear layers and embeddings split by TP)."""
    linear = model.linear_parameters * LINEAR_BYTES_PER_PARAM[quant]
    rest = (model.embedding_parameters + model.other_parameters) * UNQUANTIZED_BYTES_PER_PARAM
    return int((linear + rest) / tensor_parallel)


def overhead_bytes(model: ModelSpec) -> int:
    """Estimated non-KV, non-weight memory vLLM reserves at start (see module docstring)."""
    billions = model.parameter_count / 1e9
    estimate = OVERHEAD_BASE_GIB + OVERHEAD_PER_BILLION_GIB * billions
    gib = min(OVERHEAD_MAX_GIB, max(OVERHEAD_MIN_GIB, estimate))
    return int(gib * GIB)


def kv_tokens(kv_bytes: int, bytes_per_token: int, block_size: int = 16) -> int:
    """Tokens a KV budget holds, rounded down to whole blocks as vLLM allocates them."""
    if kv_bytes <= 0:
        return 0
    blocks = kv_bytes // (bytes_per_token * block_size)
    return int(blocks * block_size)


def kv_bytes_for(tokens: int, bytes_per_token: int) -> int:
    """KV bytes one request of ``tokens`` needs (e.g. 40,960 x 144 KiB = 5.62 GiB)."""
    return tokens * bytes_per_token


def to_gib(n_bytes: float) -> float:
    return n_bytes / GIB
