"""The vLLM argv builder: no flag twice, user extras win, nothing disabled by accident."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.errors import ExtraArgsError
from launcher.supervision.vllm_args import (
    API_SERVER_MODULE,
    VllmOptions,
    build_vllm_argv,
    flag_key,
    split_flags,
)


def _flag_keys(argv: list[str]) -> list[str]:
    return [flag_key(token) for token in argv if token.startswith("--")]


def test_default_engine_is_python_dash_m_api_server() -> None:
    argv = build_vllm_argv(VllmOptions(model="m"))
    assert argv[:3] == [sys.executable, "-m", API_SERVER_MODULE]


def test_full_options_render_each_flag_once() -> None:
    options = VllmOptions(
        model="m",
        served_model_name="chat",
        port=9000,
        max_model_len=4096,
        max_num_seqs=32,
        gpu_memory_utilization=0.9,
        tensor_parallel=2,
        quant="fp8",
        kv_cache_dtype="fp8",
        enforce_eager=True,
        shutdown_timeout=30,
    )
    argv = build_vllm_argv(options, engine=["serve"])
    keys = _flag_keys(argv)
    assert len(keys) == len(set(keys))
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--max-model-len"] == "4096"
    assert pairs["--tensor-parallel-size"] == "2"
    assert pairs["--quantization"] == "fp8"
    assert pairs["--kv-cache-dtype"] == "fp8"
    assert pairs["--shutdown-timeout"] == "30"
    assert "--enforce-eager" in argv


@pytest.mark.parametrize("quant", ["bf16", "fp16", "awq", "gptq", "int8"])
def test_quantization_flag_only_where_vllm_cannot_infer_it(quant: str) -> None:
    argv = build_vllm_argv(VllmOptions(model="m", quant=quant), engine=[])  # type: ignore[arg-type]
    assert "--quantization" not in argv


def test_prefix_caching_is_never_touched_by_default() -> None:
    argv = build_vllm_argv(VllmOptions(model="m", max_model_len=1024), engine=[])
    assert not any("prefix-caching" in token for token in argv)


def test_user_extras_override_ours_in_any_spelling() -> None:
    options = VllmOptions(
        model="m", max_model_len=4096, extra_args=("--max_model_len=2048", "-tp", "4")
    )
    argv = build_vllm_argv(options.model_copy(update={"tensor_parallel": 2}), engine=[])
    assert "4096" not in argv
    assert "--max_model_len=2048" in argv
    assert argv.count("--tensor-parallel-size") == 0
    assert argv[-2:] == ["-tp", "4"]


def test_duplicate_or_stray_extras_are_refused() -> None:
    with pytest.raises(ExtraArgsError, match="twice"):
        build_vllm_argv(VllmOptions(model="m", extra_args=("--seed", "1", "--seed=2")))
    with pytest.raises(ExtraArgsError, match="twice"):
        split_flags(["--enable-prefix-caching", "--no-enable-prefix-caching"])
    with pytest.raises(ExtraArgsError, match="not a --flag"):
        split_flags(["oops", "--seed", "1"])


def test_negative_numbers_are_values() -> None:
    assert split_flags(["--seed", "-1"]) == [("seed", ["--seed", "-1"])]


_FLAGS = ["--max-model-len", "--port", "--seed", "--max-num-seqs", "--host", "--dtype"]


@given(
    st.lists(st.sampled_from(_FLAGS), unique=True, max_size=5),
    st.integers(min_value=1, max_value=65535),
)
def test_property_no_flag_ever_appears_twice(extra_flags: list[str], port: int) -> None:
    extra: list[str] = []
    for flag in extra_flags:
        extra += [flag, "7"]
    options = VllmOptions(
        model="m", port=port, max_model_len=512, max_num_seqs=8, extra_args=tuple(extra)
    )
    keys = _flag_keys(build_vllm_argv(options, engine=[]))
    assert len(keys) == len(set(keys))
    assert set(keys) >= {"model", "port", "host"}
