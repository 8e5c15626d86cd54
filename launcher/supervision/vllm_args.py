"""The vLLM command line, built from plain data: :func:`build_vllm_argv`.

    >>> build_vllm_argv(VllmOptions(model="m", port=8001, max_model_len=4096),
    ...                 engine=["vllm-serve"])
    ['vllm-serve', '--model', 'm', '--host', '127.0.0.1', '--port', '8001',
     '--max-model-len', '4096', '--scheduling-policy', 'priority']

Rules: a flag appears once; pass-through ``extra_args`` override our values (the user wins)
but may not repeat a flag among themselves; prefix caching is left at vLLM's default (on)
unless the user passes a flag for it; ``--quantization`` only where vLLM cannot infer it:
``fp8`` (online FP8 of a 16-bit checkpoint). AWQ/GPTQ checkpoints declare their method in
config.json and vLLM then picks the fast Marlin kernels by itself; ``--quantization awq``
would force the slower non-Marlin kernel, so it is never emitted. Every replica runs
``--scheduling-policy priority`` (the gateway passes each key's class as the request's
``priority``; requests of one priority are served first come, first served, as under
``fcfs``), and the plan's admission caps (``--max-num-queued-reqs``,
``--max-num-queued-tokens``: :mod:`launcher.sizing.queue_caps`) where it has them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from launcher.errors import ExtraArgsError
from launcher.sizing.lora import LoraSettings, lora_flags
from launcher.sizing.memory import Quantization
from launcher.sizing.models import KvDtype

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# vLLM's short spellings of a few flags.
_SHORT_FLAGS = {
    "-tp": "tensor-parallel-size",
    "-pp": "pipeline-parallel-size",
    "-dp": "data-parallel-size",
    "-q": "quantization",
}
_ONLINE_QUANTIZATION: dict[str, str] = {"fp8": "fp8"}


def default_engine_command() -> list[str]:
    """``python -m vllm.entrypoints.openai.api_server`` on this interpreter (GPU and CPU)."""
    return [sys.executable, "-m", API_SERVER_MODULE]


class VllmOptions(BaseModel):
    """Everything the kit sets on a vLLM server. ``None`` leaves vLLM's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_model_len: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_queued_reqs: int | None = Field(default=None, ge=1)
    max_num_queued_tokens: int | None = Field(default=None, ge=1)
    scheduling_policy: Literal["fcfs", "priority"] | None = "priority"
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel: int = Field(default=1, ge=1)
    quant: Quantization = "bf16"
    kv_cache_dtype: KvDtype = "auto"
    enforce_eager: bool = False
    shutdown_timeout: int | None = Field(default=None, ge=0)
    lora: LoraSettings | None = None
    extra_args: tuple[str, ...] = ()


def flag_key(token: str) -> str:
    """The identity of a flag: ``--max_model_len=5`` -> ``max-model-len``; ``--no-x`` -> ``x``."""
    if token in _SHORT_FLAGS:
        return _SHORT_FLAGS[token]
    name = token.lstrip("-").split("=", 1)[0].replace("_", "-")
    return name.removeprefix("no-")


def _is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)  # a negative number is a value, not a flag
    except ValueError:
        return True
    return False


def split_flags(args: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Group ``args`` into (key, tokens) per flag; refuse strays and repeated flags."""
    groups: list[tuple[str, list[str]]] = []
    for token in args:
        if _is_flag(token):
            groups.append((flag_key(token), [token]))
        elif groups:
            groups[-1][1].append(token)
        else:
            raise ExtraArgsError(f"extra vLLM argument {token!r} is not a --flag")
    seen: set[str] = set()
    for key, _ in groups:
        if key in seen:
            raise ExtraArgsError(f"extra vLLM arguments give --{key} twice")
        seen.add(key)
    return groups


def without_extra_flag(options: VllmOptions, key: str) -> VllmOptions:
    """The options minus a pass-through flag (so that a corrected value of ours applies)."""
    kept = [tok for flag, toks in split_flags(options.extra_args) if flag != key for tok in toks]
    return options.model_copy(update={"extra_args": tuple(kept)})


def _own_flags(options: VllmOptions) -> list[tuple[str, list[str]]]:
    flags: list[tuple[str, str | None]] = [
        ("model", options.model),
        ("served-model-name", options.served_model_name),
        ("host", options.host),
        ("port", str(options.port)),
        ("max-model-len", _opt(options.max_model_len)),
        ("max-num-seqs", _opt(options.max_num_seqs)),
        ("max-num-queued-reqs", _opt(options.max_num_queued_reqs)),
        ("max-num-queued-tokens", _opt(options.max_num_queued_tokens)),
        ("scheduling-policy", options.scheduling_policy),
        ("gpu-memory-utilization", _opt(options.gpu_memory_utilization)),
        (
            "tensor-parallel-size",
            str(options.tensor_parallel) if options.tensor_parallel > 1 else None,
        ),
        ("quantization", _ONLINE_QUANTIZATION.get(options.quant)),
        ("kv-cache-dtype", "fp8" if options.kv_cache_dtype == "fp8" else None),
        ("shutdown-timeout", _opt(options.shutdown_timeout)),
    ]
    groups = [(key, [f"--{key}", value]) for key, value in flags if value is not None]
    if options.enforce_eager:
        groups.append(("enforce-eager", ["--enforce-eager"]))
    if options.lora is not None:
        groups += split_flags(lora_flags(options.lora))
    return groups


def _opt(value: float | int | None) -> str | None:
    return None if value is None else str(value)


def build_vllm_argv(options: VllmOptions, engine: Sequence[str] | None = None) -> list[str]:
    """The full command: engine prefix, our flags (minus the overridden ones), extra args."""
    extra = split_flags(options.extra_args)
    overridden = {key for key, _ in extra}
    argv = list(engine if engine is not None else default_engine_command())
    for key, tokens in _own_flags(options):
        if key not in overridden:
            argv.extend(tokens)
    for _, tokens in extra:
        argv.extend(tokens)
    return argv
