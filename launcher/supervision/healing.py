"""Recognise vLLM's start-up memory errors and correct the options
(docs/memory.md#refusal-messages).

Pure: :func:`diagnose` reads the engine's log text and returns the corrected
:class:`VllmOptions` with a one-line reason, or None when the failure is not one we heal.

    >>> diagnose(VllmOptions(model="m", max_model_len=40960), "... the estimated maximum "
    ...          "model length is 32768. Try ...").options.max_model_len
    32768
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from launcher.supervision.vllm_args import VllmOptions, split_flags, without_extra_flag

# -- healing rule: begin (vkit/render/vllm_supervisor.py carries a copy of this block) --
# New wording (vLLM >= 0.6): "... Based on the available memory, the estimated maximum
# model length is 32768. ..."
_ESTIMATED_MAX_LEN = re.compile(r"estimated maximum model length is (\d+)")
# Old wording: "The model's max seq len (X) is larger than the maximum number of tokens
# that can be stored in KV cache (Y)."
_OLD_MAX_SEQ_LEN = re.compile(
    r"max seq len \((\d+)\) is larger than the maximum number of tokens that can be stored "
    r"in KV cache \((\d+)\)"
)
# "Free memory on device cuda:0 (10.5/23.5 GiB) on startup is less than desired GPU memory
# utilization (0.92, 21.6 GiB)." (older releases omit the device name)
_FREE_MEMORY = re.compile(
    r"Free memory on device[^(]*\(([\d.]+)/([\d.]+) GiB\)[^(]*?"
    r"less than desired GPU memory utilization \(([\d.]+)"
)
# Headroom left for the other process's growth when lowering the utilization.
UTILIZATION_HEADROOM = 0.02
MIN_UTILIZATION = 0.05


def parse_max_model_len_hint(log: str) -> int | None:
    """The max_model_len vLLM says would fit, from either wording; None if absent."""
    found = _ESTIMATED_MAX_LEN.findall(log)
    if found:
        return int(found[-1])
    old = _OLD_MAX_SEQ_LEN.findall(log)
    if old:
        return int(old[-1][1])
    return None


def parse_free_memory(log: str) -> tuple[float, float, float] | None:
    """(free GiB, total GiB, wanted utilization) from the free-memory error; None if absent."""
    found = _FREE_MEMORY.findall(log)
    if not found:
        return None
    free, total, wanted = found[-1]
    return float(free), float(total), float(wanted)


def lowered_utilization(free_gib: float, total_gib: float) -> float:
    """The fraction of the card that is free now, less headroom, rounded down to 0.01."""
    fraction = free_gib / total_gib - UTILIZATION_HEADROOM
    return math.floor(fraction * 100) / 100


def correction(
    max_model_len: int | None, utilization: float | None, log: str
) -> tuple[str, str, str] | None:
    """The one flag to change after the start-up failure in ``log``, as (flag without its
    dashes, new value, reason), for an engine started with ``max_model_len`` and
    ``utilization`` (None: vLLM's default); None when there is nothing to heal."""
    hint = parse_max_model_len_hint(log)
    if hint is not None and hint > 0 and (max_model_len is None or hint < max_model_len):
        reason = (
            f"the KV cache cannot hold one request of max_model_len "
            f"{max_model_len or 'default'}: vLLM estimates {hint} fits, "
            f"retrying with --max-model-len {hint}"
        )
        return "max-model-len", str(hint), reason
    free = parse_free_memory(log)
    if free is not None:
        free_gib, total_gib, wanted = free
        lowered = lowered_utilization(free_gib, total_gib)
        if MIN_UTILIZATION <= lowered < (utilization or wanted):
            reason = (
                f"only {free_gib}/{total_gib} GiB is free on the GPU (another process "
                f"holds memory): retrying with --gpu-memory-utilization {lowered}"
            )
            return "gpu-memory-utilization", str(lowered), reason
    return None


# -- healing rule: end --


@dataclass(frozen=True)
class Healing:
    """Corrected options and why."""

    options: VllmOptions
    reason: str


def _extra_value(options: VllmOptions, key: str) -> str | None:
    """The value a pass-through flag gives ``key`` (``--key V`` or ``--key=V``), if any."""
    for flag, tokens in split_flags(options.extra_args):
        if flag == key:
            return tokens[0].split("=", 1)[1] if "=" in tokens[0] else " ".join(tokens[1:])
    return None


def _effective_max_model_len(options: VllmOptions) -> int | None:
    """Ours, unless a pass-through ``--max-model-len`` overrides it."""
    extra = _extra_value(options, "max-model-len")
    if extra is not None and extra.isdigit():
        return int(extra)
    return options.max_model_len


def diagnose(options: VllmOptions, log: str) -> Healing | None:
    """Options that avoid the memory error in ``log``, or None if there is nothing to heal.

    A corrected value also replaces a pass-through flag for the same setting."""
    change = correction(_effective_max_model_len(options), options.gpu_memory_utilization, log)
    if change is None:
        return None
    flag, value, reason = change
    field = flag.replace("-", "_")
    typed: int | float = int(value) if field == "max_model_len" else float(value)
    healed = without_extra_flag(options, flag)
    return Healing(options=healed.model_copy(update={field: typed}), reason=reason)
