"""Users per replica at a per-user speed: batching, KV and speed limits (the step model)."""

from __future__ import annotations

import pytest

from launcher.sizing.capacity.throughput import (
    DecodeCalibration,
    decode_step_seconds,
    gpu_throughput,
    max_batch_at_speed,
    workload_for,
)
from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import load_model

CALIBRATION = DecodeCalibration()


def test_single_stream_is_about_0_7_of_bandwidth_over_weights() -> None:
    # docs/gpus-and-costs.md#single-stream-decode-speed: one stream, prompt included, serves
    # ~0.65-0.75 x bandwidth / bytes of weights.
    gpu, model = get_gpu("rtx4090"), load_model("7b")
    workload = workload_for(model, "fp16", context_tokens=600)
    single = 1 / decode_step_seconds(workload, gpu, 1, CALIBRATION)
    roofline = gpu.bandwidth_gbs * 1e9 / workload.weight_bytes
    assert 0.62 <= single / roofline <= 0.8


def test_batching_raises_total_and_lowers_per_user_speed() -> None:
    workload = workload_for(load_model("7b"), "fp16", context_tokens=600)
    gpu = get_gpu("h100")
    steps = [decode_step_seconds(workload, gpu, b, CALIBRATION) for b in (1, 8, 32)]
    totals = [b / t for b, t in zip((1, 8, 32), steps, strict=True)]
    assert steps == sorted(steps)
    assert totals == sorted(totals)
    assert totals[-1] > 5 * totals[0]


def test_published_rtx4090_curve_is_matched_within_25_percent() -> None:
    # docs/gpus-and-costs.md#published-measurements: Mistral-7B fp16, 256 in / 128 out.
    published = {4: 210, 8: 377, 16: 644, 32: 975, 48: 1190}
    workload = workload_for(load_model("7b"), "fp16", prompt_tokens=256, output_tokens=128)
    gpu = get_gpu("rtx4090")
    for batch, tok_s in published.items():
        model_tok_s = batch / decode_step_seconds(workload, gpu, batch, CALIBRATION)
        assert model_tok_s == pytest.approx(tok_s, rel=0.25), batch


@pytest.mark.parametrize("target", [20.0, 30.0, 40.0, 45.0])
def test_max_batch_is_the_largest_batch_at_the_target(target: float) -> None:
    workload = workload_for(load_model("7b"), "fp16", context_tokens=600)
    gpu = get_gpu("rtx4090")
    batch = max_batch_at_speed(workload, gpu, target, CALIBRATION)
    assert batch >= 1
    assert 1 / decode_step_seconds(workload, gpu, batch, CALIBRATION) >= target
    assert 1 / decode_step_seconds(workload, gpu, batch + 1, CALIBRATION) < target


def test_lower_target_speed_serves_more_users() -> None:
    gpu, model = get_gpu("l40s"), load_model("7b")
    users = [
        gpu_throughput(gpu, model, "fp16", target_tok_s=t, context_tokens=600).users
        for t in (40, 30, 20)
    ]
    assert users == sorted(users) and users[0] < users[-1]


def test_long_contexts_hit_the_kv_cache_limit() -> None:
    speed = gpu_throughput(
        get_gpu("rtx4090"), load_model("7b"), "fp16", target_tok_s=5, context_tokens=16_384
    )
    assert speed.limited_by == "kv-cache"
    assert speed.users == speed.kv_tokens // 16_384


def test_unsupported_quantization_is_reported_not_raised() -> None:
    # FP8 runs on Ampere (weight-only); a Turing card (no Marlin kernels) has no FP8 at all.
    t4 = get_gpu("a10").model_copy(update={"key": "t4", "name": "NVIDIA T4", "arch": "turing"})
    speed = gpu_throughput(t4, load_model("7b"), "fp8", target_tok_s=30, context_tokens=600)
    assert (speed.users, speed.limited_by) == (0, "unsupported")
    assert "FP8" in speed.note


def test_quantization_buys_speed_on_the_same_gpu() -> None:
    gpu, model = get_gpu("rtx4090"), load_model("7b")
    fp16 = gpu_throughput(gpu, model, "fp16", target_tok_s=40, context_tokens=600)
    awq = gpu_throughput(gpu, model, "awq", target_tok_s=40, context_tokens=600)
    assert awq.single_stream_tok_s > 2 * fp16.single_stream_tok_s
    assert awq.users > fp16.users
