"""FP8 on Ampere: planned weight-only (FP8 Marlin), at its own speed."""

from __future__ import annotations

import pytest

from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import load_model
from launcher.sizing.quant_kernels import (
    FP8_MARLIN_DECODE_SPEEDUP,
    fp8_kernel,
    planned_max_batch,
    planned_speed_at,
    planned_step_seconds,
)
from launcher.sizing.speed import Workload, step_seconds


def workload(quant: str, model: str = "8b") -> Workload:
    return Workload(load_model(model), quant, 500, 200)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("gpu", "kernel"),
    [
        ("a100-80gb", "w8a16-marlin"),
        ("a10", "w8a16-marlin"),
        ("rtx3090", "w8a16-marlin"),
        ("l4", "w8a8"),
        ("h100-sxm", "w8a8"),
    ],
)
def test_the_kernel_follows_the_architecture(gpu: str, kernel: str) -> None:
    assert fp8_kernel(get_gpu(gpu)) == kernel


def test_batch_one_is_the_published_speedup_over_16_bit() -> None:
    a100 = get_gpu("a100-80gb")
    fp8 = planned_speed_at(workload("fp8"), a100, 1).single_stream_tok_s
    bf16 = planned_speed_at(workload("bf16"), a100, 1).single_stream_tok_s
    assert fp8 / bf16 == pytest.approx(FP8_MARLIN_DECODE_SPEEDUP)


def test_the_gain_fades_as_the_batch_grows() -> None:
    a100 = get_gpu("a100-80gb")
    gains = [
        step_seconds(workload("bf16"), a100, b) / planned_step_seconds(workload("fp8"), a100, b)
        for b in (1, 16, 64, 256)
    ]
    assert gains == sorted(gains, reverse=True)
    assert 1.0 < gains[-1] < 1.2


def test_w8a8_gpus_keep_the_speed_models_own_step() -> None:
    h100 = get_gpu("h100-sxm")
    for batch in (1, 32):
        expected = step_seconds(workload("fp8"), h100, batch)
        assert planned_step_seconds(workload("fp8"), h100, batch) == expected


@pytest.mark.parametrize("target", [20.0, 40.0, 80.0])
def test_the_largest_batch_at_a_speed_is_the_planned_steps(target: float) -> None:
    a100, fp8 = get_gpu("a100-80gb"), workload("fp8")
    found = planned_max_batch(fp8, a100, target, limit=512)
    assert found == max(
        (b for b in range(1, 513) if 1 / planned_step_seconds(fp8, a100, b) >= target),
        default=0,
    )
