"""A replica's ``vkit launch`` command line: :func:`launch_args`, the one translation.

    >>> launch_args(LaunchSettings(model="m", host="127.0.0.1", port=8001, cpu=True))
    ['--model', 'm', '--host', '127.0.0.1', '--port', '8001', '--cpu']

Targets whose replicas run ``vkit launch`` (``vkit up``'s processes; systemd's ``vllm@``
instances run it on a profile) pass it a :class:`~launcher.supervision.launch_spec.LaunchSettings`
as flags: the flag of every value the settings were given, in :data:`LAUNCH_FLAGS` order,
then the pass-through vLLM arguments after ``--`` (LoRA's flags among them: ``vkit launch`` has
none of its own for adapters). A default left out stays ``vkit launch``'s own. ``vkit launch``
parses these flags back into the same settings (a test says so). The
CPU engine's KV cache size has no flag: ``vkit launch`` reads it from vLLM's own variable
(:func:`launch_env`).
"""

from __future__ import annotations

from launcher.sizing.lora import lora_env, lora_flags
from launcher.supervision.launch_spec import LaunchSettings

__all__ = ["LAUNCH_FLAGS", "launch_args", "launch_env"]

# (LaunchSettings field, vkit launch flag), in the order they are written.
LAUNCH_FLAGS: tuple[tuple[str, str], ...] = (
    ("model", "--model"),
    ("host", "--host"),
    ("port", "--port"),
    ("served_model_name", "--served-model-name"),
    ("shutdown_timeout", "--shutdown-timeout"),
    ("max_model_len", "--max-model-len"),
    ("cpu", "--cpu"),
    ("enforce_eager", "--enforce-eager"),
    ("gpu", "--gpu"),
    ("quant", "--quant"),
    ("kv_cache_dtype", "--kv-cache-dtype"),
    ("tensor_parallel", "--tensor-parallel-size"),
    ("gpu_memory_utilization", "--gpu-memory-utilization"),
    ("concurrency", "--concurrency"),
    ("max_restarts", "--max-restarts"),
    ("ttft_target", "--ttft-target"),
)
# Read by vkit launch from the environment, not a flag.
KV_CACHE_SPACE_VAR = "VLLM_CPU_KVCACHE_SPACE"


def launch_args(settings: LaunchSettings) -> list[str]:
    """``vkit launch`` flags for every value ``settings`` was given (a switch given as
    false is vkit launch's default: no flag), then ``--`` and the vLLM arguments."""
    given = settings.model_fields_set
    args: list[str] = []
    for field, flag in LAUNCH_FLAGS:
        value = getattr(settings, field)
        if field not in given or value is None or value is False:
            continue
        args += [flag] if value is True else [flag, str(value)]
    passed = [*(lora_flags(settings.lora) if settings.lora else []), *settings.extra_args]
    if passed:
        args += ["--", *passed]
    return args


def launch_env(settings: LaunchSettings) -> dict[str, str]:
    """The environment ``vkit launch`` reads a given value from (the CPU KV cache size), and
    vLLM's switch for loading adapters at run time, which its engine inherits."""
    env = lora_env(settings.lora)
    if "kv_cache_space_gib" in settings.model_fields_set:
        env[KV_CACHE_SPACE_VAR] = str(settings.kv_cache_space_gib)
    return env
