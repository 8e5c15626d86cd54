"""LoRA adapters on a replica: what vLLM is told, and the memory its adapter slots take.

    >>> lora = LoraSettings(adapters=(LoraAdapter(name="sql", source="org/sql-lora", rank=8),))
    >>> lora.rank, lora_flags(lora)[-2:]
    (8, ['--lora-modules', 'sql=org/sql-lora'])

vLLM takes ``--max-lora-rank`` from a fixed set (:data:`LORA_RANKS`, ``MaxLoRARanks`` in
``vllm/config/lora.py``); the kit picks the smallest one that holds every adapter unless one is
given. At start vLLM allocates, on every GPU, ``max_loras`` slots of the largest rank for each
LoRA-wrapped layer, before it profiles memory: those bytes come out of the KV cache
(:func:`lora_bytes`, docs/memory.md#lora-adapters).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

from launcher.sizing.models import ModelSpec

__all__ = [
    "LORA_RANKS",
    "RUNTIME_LORA_VAR",
    "LoraAdapter",
    "LoraSettings",
    "lora_bytes",
    "lora_env",
    "lora_flags",
]

# vLLM 0.32's accepted --max-lora-rank values (vllm/config/lora.py: MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM serves /v1/load_lora_adapter and /v1/unload_lora_adapter only with this set.
RUNTIME_LORA_VAR = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
LORA_DTYPE_BYTES = 2  # lora_dtype "auto": the base model's 16-bit dtype


class LoraAdapter(BaseModel):
    """One adapter: the name clients send as ``model``, where vLLM reads it, its rank."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[^\s=,]+$")
    source: str = Field(min_length=1, description="a directory or a Hugging Face id")
    rank: int = Field(ge=1, description="the adapter's r (adapter_config.json)")


class LoraSettings(BaseModel):
    """LoRA on one replica group: the adapters it starts with and the slots it keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapters: tuple[LoraAdapter, ...] = ()
    max_rank: int | None = Field(default=None, description="None: the smallest that fits all")
    max_loras: int = Field(default=1, ge=1, description="adapters in one batch (GPU slots)")
    max_cpu_loras: int | None = Field(default=None, ge=1, description="adapters kept in RAM")
    runtime_updates: bool = Field(default=False, description="load/unload while running")

    @model_validator(mode="after")
    def _valid(self) -> LoraSettings:
        if self.max_rank is not None and self.max_rank not in LORA_RANKS:
            raise ValueError(
                f"max_rank {self.max_rank} is not one vLLM accepts: {list(LORA_RANKS)}"
            )
        names = [adapter.name for adapter in self.adapters]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"adapter {twice[0]!r} is named twice")
        biggest = max((adapter.rank for adapter in self.adapters), default=0)
        if biggest > self.rank:
            adapter = next(a for a in self.adapters if a.rank == biggest)
            raise ValueError(
                f"adapter {adapter.name!r} has rank {adapter.rank}, above max_rank {self.rank}"
            )
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) is below max_loras ({self.max_loras})"
            )
        return self

    @property
    def rank(self) -> int:
        """``--max-lora-rank``: the given one, else the smallest of vLLM's that holds all."""
        if self.max_rank is not None:
            return self.max_rank
        biggest = max((adapter.rank for adapter in self.adapters), default=1)
        if biggest > LORA_RANKS[-1]:
            raise ValueError(f"rank {biggest} is above vLLM's largest ({LORA_RANKS[-1]})")
        return next(rank for rank in LORA_RANKS if rank >= biggest)


def lora_bytes(model: ModelSpec, lora: LoraSettings, tensor_parallel: int = 1) -> int:
    """Bytes of adapter slots on each GPU (docs/memory.md#lora-adapters).

    Per decoder layer, for ``max_loras`` slots of rank ``r``: an A matrix (r x input) per
    slice and a B matrix (output x r) of each wrapped linear, column-parallel layers split
    on the output and row-parallel ones on the input (``create_lora_weights`` in
    ``vllm/lora/layers/base_linear.py``); q/k/v are three slices and gate/up two, each with
    its own A over the whole hidden size. Plus the lm_head's (``logits_processor.py``)."""
    h, tp = model.hidden_size, tensor_parallel
    q = model.num_attention_heads * model.head_dim
    kv = model.num_key_value_heads * model.head_dim
    inter = model.intermediate_size
    a_cols = 3 * h + q // tp + 2 * h + inter // tp  # qkv, o_proj, gate_up, down_proj
    b_rows = (q + 2 * kv) // tp + h + 2 * inter // tp + h
    per_layer = a_cols + b_rows
    lm_head = h + model.vocab_size
    elements = lora.max_loras * lora.rank * (model.num_hidden_layers * per_layer + lm_head)
    return elements * LORA_DTYPE_BYTES


def lora_flags(lora: LoraSettings) -> list[str]:
    """vLLM's flags for the group: ``--lora-modules name=source`` (its JSON form when the
    source holds a comma, which the short form cannot carry)."""
    flags = ["--enable-lora", "--max-loras", str(lora.max_loras), "--max-lora-rank", str(lora.rank)]
    if lora.max_cpu_loras is not None:
        flags += ["--max-cpu-loras", str(lora.max_cpu_loras)]
    if lora.adapters:
        flags.append("--lora-modules")
        for adapter in lora.adapters:
            if "," in adapter.source:
                flags.append(json.dumps({"name": adapter.name, "path": adapter.source}))
            else:
                flags.append(f"{adapter.name}={adapter.source}")
    return flags


def lora_env(lora: LoraSettings | None) -> dict[str, str]:
    """The engine's environment for LoRA: runtime loading where the group allows it."""
    if lora is None or not lora.runtime_updates:
        return {}
    return {RUNTIME_LORA_VAR: "True"}
