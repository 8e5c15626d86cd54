"""The fit solver against the checks of docs/memory.md#worked-check and the cost guide's claims."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from launcher.errors import UnsupportedParallelismError, UnsupportedQuantizationError
from launcher.sizing.fit import (
    CpuTarget,
    FitRequest,
    choose_max_model_len,
    plan_fit,
    round_down_context,
)
from launcher.sizing.gpus import GIB, get_gpu, load_gpus
from launcher.sizing.memory import kv_bytes_for, kv_tokens, weight_bytes
from launcher.sizing.models import load_model

ALL_GPUS = tuple(load_gpus().values())


def test_qwen3_4b_on_l4_kv_tokens_match_vllm_docs() -> None:
    # vLLM's docs: Qwen3-4B on an L4 holds 83,488 tokens in 11.47 GiB of KV cache.
    spec = load_model("qwen3-4b")
    tokens = kv_tokens(int(11.47 * GIB), spec.kv_bytes_per_token())
    assert tokens == pytest.approx(83_488, rel=0.01)


def test_qwen3_8b_full_context_needs_5_62_gib() -> None:
    spec = load_model("qwen3-8b")
    need = kv_bytes_for(spec.max_position_embeddings, spec.kv_bytes_per_token())
    assert spec.max_position_embeddings == 40_960
    assert round(need / GIB, 2) == pytest.approx(5.62, abs=0.01)


def test_llama_8b_bf16_on_4090_cannot_take_128k() -> None:
    spec, gpu = load_model("llama-3.1-8b"), get_gpu("rtx4090")
    full = plan_fit(FitRequest(context=131_072), gpu, spec, ALL_GPUS)
    assert not full.fits
    assert "131072 tokens needs 16.00 GiB" in full.problems[0]
    assert full.ways_out
    default = plan_fit(FitRequest(), gpu, spec)
    assert default.fits
    assert 2048 <= default.max_model_len < 131_072
    # The chosen length really fits one request in the KV cache.
    assert default.max_model_len <= default.kv_tokens


def test_70b_fp16_does_not_fit_one_h100_and_int4_does() -> None:
    spec, gpu = load_model("70b"), get_gpu("h100-sxm")
    fp16 = plan_fit(FitRequest(quant="fp16"), gpu, spec, ALL_GPUS)
    assert not fp16.fits
    assert fp16.weights_gib > fp16.budget_gib
    assert any("--quant awq" in way for way in fp16.ways_out)
    int4 = plan_fit(FitRequest(quant="awq"), gpu, spec)
    assert int4.fits
    assert int4.weights_gib < 40


def test_13b_int4_fits_an_rtx4090() -> None:
    plan = plan_fit(FitRequest(quant="awq"), get_gpu("rtx4090"), load_model("13b"))
    assert plan.fits
    assert plan.max_model_len == 4096  # llama-2's max_position_embeddings caps it


def test_fp8_weights_are_weight_only_on_a100_and_fp8_kv_is_fine() -> None:
    spec = load_model("8b")
    fp8 = plan_fit(FitRequest(quant="fp8"), get_gpu("a100-80gb"), spec)
    bf16 = plan_fit(FitRequest(quant="bf16"), get_gpu("a100-80gb"), spec)
    assert fp8.fits and fp8.fp8_weight_only and not bf16.fp8_weight_only
    assert fp8.weights_gib < 0.6 * bf16.weights_gib  # FP8's bytes, not 16-bit's
    assert not plan_fit(FitRequest(quant="fp8"), get_gpu("h100-sxm"), spec).fp8_weight_only
    turing = get_gpu("a10").model_copy(update={"key": "t4", "arch": "turing"})
    with pytest.raises(UnsupportedQuantizationError, match="FP8"):
        plan_fit(FitRequest(quant="fp8"), turing, spec)
    plan = plan_fit(FitRequest(kv_dtype="fp8"), get_gpu("a100-80gb"), spec)
    assert plan.kv_bytes_per_token == 64 * 1024


def test_concurrency_target_picks_the_largest_round_length() -> None:
    spec, gpu = load_model("llama-3.1-8b"), get_gpu("rtx4090")
    plan = plan_fit(FitRequest(quant="awq", concurrency=16), gpu, spec)
    assert plan.fits
    assert plan.max_model_len % 1024 == 0
    assert plan.kv_tokens // plan.max_model_len >= 16
    assert plan.kv_tokens // (plan.max_model_len + 1024) < 16
    assert plan.max_num_seqs >= 16


def test_int4_weights_keep_embeddings_unquantized() -> None:
    spec = load_model("llama-3.1-8b")
    int4 = weight_bytes(spec, "awq")
    # 1.05 B embedding + lm_head params stay at 2 bytes: ~2 GiB of the ~5.3 GiB.
    assert int4 > spec.embedding_parameters * 2
    assert 0.3 < int4 / weight_bytes(spec, "bf16") < 0.4


def test_round_down_context() -> None:
    assert round_down_context(35_152) == 34_816
    assert round_down_context(1024) == 1024
    assert round_down_context(1000) == 512
    assert round_down_context(0) == 0


def test_max_model_len_never_exceeds_max_position_embeddings() -> None:
    spec = load_model("mistral-7b-v0.3")
    assert choose_max_model_len(FitRequest(), spec, 10**7) == 32_768
    assert choose_max_model_len(FitRequest(context=4096), spec, 10**7) == 4096


def test_no_fit_even_at_int4_gives_numbers_and_alternatives() -> None:
    plan = plan_fit(FitRequest(quant="awq"), get_gpu("rtx4090"), load_model("70b"), ALL_GPUS)
    assert not plan.fits
    assert "GiB" in plan.problems[0]
    assert any("--gpu" in way for way in plan.ways_out)


def test_tensor_parallel_halves_weights_per_gpu() -> None:
    spec, gpu = load_model("70b"), get_gpu("h100-sxm")
    one = plan_fit(FitRequest(quant="awq"), gpu, spec)
    two = plan_fit(FitRequest(quant="awq", tensor_parallel=2), gpu, spec)
    assert two.weights_gib == pytest.approx(one.weights_gib / 2, rel=0.01)
    assert two.kv_tokens > one.kv_tokens


def test_speed_estimate_is_plausible() -> None:
    plan = plan_fit(
        FitRequest(quant="fp16", concurrency=16), get_gpu("rtx4090"), load_model("mistral-7b-v0.3")
    )
    assert plan.single_stream_tok_s is not None and plan.aggregate_tok_s is not None
    # ~0.75 x 1008 GB/s / 14.5 GB = ~52 tok/s for one stream.
    assert 40 < plan.single_stream_tok_s < 65
    assert plan.aggregate_tok_s > 4 * plan.single_stream_tok_s


def test_cpu_target_uses_kv_cache_space() -> None:
    spec = load_model("llama-3.1-8b")
    plan = plan_fit(FitRequest(context=256), CpuTarget(kv_cache_space_gib=1), spec)
    assert plan.cpu and plan.fits
    assert plan.kv_tokens == GIB // spec.kv_bytes_per_token() // 128 * 128
    assert plan.single_stream_tok_s is None
    with pytest.raises(UnsupportedQuantizationError):
        plan_fit(FitRequest(quant="awq"), CpuTarget(), spec)


def test_both_targets_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        FitRequest(context=4096, concurrency=4)


def test_tiny_model_on_cpu_matches_the_measured_vllm_capacity() -> None:
    # vLLM 0.32 CPU, VLLM_CPU_KVCACHE_SPACE=1, measured on this project's machines:
    # vllm:cache_config_info{block_size="128",kv_cache_size_tokens="2097152",...}
    plan = plan_fit(
        FitRequest(context=256), CpuTarget(kv_cache_space_gib=1), load_model("tiny-llama")
    )
    assert plan.kv_tokens == 2_097_152
    assert plan.block_size == 128


def test_tensor_parallel_must_fit_one_node_and_divide_the_heads() -> None:
    small_node = get_gpu("l40s").model_copy(update={"per_node": 4})
    with pytest.raises(UnsupportedParallelismError, match="larger than one node"):
        plan_fit(FitRequest(tensor_parallel=8), small_node, load_model("70b"))
    with pytest.raises(UnsupportedParallelismError, match="28 attention"):
        plan_fit(FitRequest(tensor_parallel=8), get_gpu("h100"), load_model("qwen2.5-7b"))
    with pytest.raises(UnsupportedParallelismError, match="CPU"):
        plan_fit(FitRequest(tensor_parallel=2), CpuTarget(), load_model("8b"))
    assert plan_fit(FitRequest(tensor_parallel=4), get_gpu("h100"), load_model("qwen2.5-7b")).fits


def test_the_batch_cap_follows_the_stated_request_size() -> None:
    # max_num_seqs is what the KV cache holds of the user's own requests (prompt + output), not
    # of 1,024-token ones: short chats batch more, long documents fewer.
    gpu, spec = get_gpu("rtx4090"), load_model("llama-3.1-8b")
    short = plan_fit(FitRequest(quant="awq", prompt_tokens=200, output_tokens=100), gpu, spec)
    long = plan_fit(FitRequest(quant="awq", prompt_tokens=3000, output_tokens=1000), gpu, spec)
    assert short.kv_tokens == long.kv_tokens
    assert short.max_num_seqs == min(256, short.kv_tokens // 300)
    assert long.max_num_seqs == long.kv_tokens // 4000 < short.max_num_seqs
