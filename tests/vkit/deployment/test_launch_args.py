"""A replica's settings as ``vkit launch`` flags: parsed back by ``vkit launch``'s own parser
they are the same settings."""

from __future__ import annotations

import doctest
from typing import Any

import pytest

import vkit.deployment.launch_args as launch_args_module
from launcher.sizing.lora import RUNTIME_LORA_VAR, LoraAdapter, LoraSettings, lora_flags
from launcher.supervision.launch_spec import LaunchSettings
from launcher.supervision.profiles import LaunchEnvironment
from vkit.cli import build_parser
from vkit.commands.launch import settings_from
from vkit.deployment.launch_args import KV_CACHE_SPACE_VAR, LAUNCH_FLAGS, launch_args, launch_env


def parsed_back(settings: LaunchSettings) -> LaunchSettings:
    """What ``vkit launch FLAGS`` (with the variables of launch_env) would run."""
    args = build_parser().parse_args(["launch", *launch_args(settings)])
    kv_space = launch_env(settings).get(KV_CACHE_SPACE_VAR)
    environment = LaunchEnvironment(vllm_cpu_kvcache_space=kv_space and int(kv_space))
    return settings_from(args, environment)


CASES: list[dict[str, Any]] = [
    {"model": "m"},
    {"model": "/run/tiny-llama", "host": "127.0.0.1", "port": 8101, "cpu": True},
    {"model": "m", "served_model_name": "n", "shutdown_timeout": 10, "max_model_len": 256},
    {"model": "m", "cpu": True, "enforce_eager": True, "kv_cache_space_gib": 4},
    {"model": "llama-3.1-8b", "gpu": "rtx4090", "quant": "awq", "concurrency": 16},
    {"model": "m", "gpu": "h200", "quant": "fp8", "kv_cache_dtype": "fp8", "tensor_parallel": 2},
    {"model": "m", "gpu_memory_utilization": 0.92, "max_restarts": 0},
    {"model": "llama-3.1-8b", "gpu": "rtx4090", "ttft_target": 0.5},
    {"model": "m", "cpu": False, "enforce_eager": False},  # switches given as off
    {"model": "m", "extra_args": ("--seed", "7", "--max-model-len=99")},
]


@pytest.mark.parametrize("fields", CASES, ids=str)
def test_vkit_launch_parses_the_flags_back_into_the_same_settings(fields: dict[str, Any]) -> None:
    settings = LaunchSettings(**fields)
    assert parsed_back(settings) == settings


def test_only_the_values_given_become_flags_in_one_order() -> None:
    settings = LaunchSettings(model="m", cpu=True, port=8101, host="127.0.0.1")
    expected = ["--model", "m", "--host", "127.0.0.1", "--port", "8101", "--cpu"]
    assert launch_args(settings) == expected
    assert launch_env(settings) == {}


def test_every_launch_setting_has_a_flag_or_a_variable() -> None:
    """A new LaunchSettings field must be given a flag here (or vkit up would drop it)."""
    by_env_or_extra = {"kv_cache_space_gib", "extra_args", "lora"}
    flagged = {field for field, _ in LAUNCH_FLAGS}
    assert flagged | by_env_or_extra == set(LaunchSettings.model_fields)
    assert not flagged & by_env_or_extra


def test_launch_args_module_examples() -> None:
    failures, tried = doctest.testmod(launch_args_module)
    assert tried > 0 and failures == 0


def test_lora_travels_as_vllm_flags_after_the_separator_and_its_switch_as_a_variable() -> None:
    lora = LoraSettings(
        adapters=(LoraAdapter(name="sql", source="/run/sql", rank=8),), runtime_updates=True
    )
    settings = LaunchSettings(model="m", lora=lora, extra_args=("--seed", "7"))
    assert launch_args(settings) == ["--model", "m", "--", *lora_flags(lora), "--seed", "7"]
    assert launch_env(settings) == {RUNTIME_LORA_VAR: "True"}
    back = parsed_back(settings)
    assert back.extra_args == (*lora_flags(lora), "--seed", "7")
