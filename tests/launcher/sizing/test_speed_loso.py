"""The speed model against sources it was not fitted to: leave-one-source-out."""

from __future__ import annotations

from functools import cache

import pytest

from launcher.sizing.speed import SpeedCalibration
from launcher.sizing.speed_band import SPEED_ERROR_BAND
from launcher.sizing.speed_fit import (
    FITTED,
    PRIOR,
    error_band,
    figures,
    fit,
    leave_one_source_out,
)
from launcher.sizing.speed_table import calibration_report, load_measurements, usable

RUNS = usable(load_measurements())[0]


@cache
def held_out():  # fitted once per session, when a test first asks, not at collection
    return leave_one_source_out(RUNS)


def test_the_table_spans_gpus_quantizations_tensor_parallel_and_load() -> None:
    runs = load_measurements()
    assert all(run.vllm for run in runs)  # a version, or "unstated"
    assert {"rtx4090", "a40", "a100-40gb", "a100-80gb", "h100-sxm"} <= {run.gpu for run in RUNS}
    assert {"bf16", "fp16", "fp8"} <= {run.quant for run in RUNS}
    assert any(run.tensor_parallel > 1 for run in RUNS)
    concurrencies = [c for run in RUNS for c in run.points]
    assert min(concurrencies) <= 4 and max(concurrencies) >= 150
    assert len({run.group for run in RUNS}) >= 7
    assert any(run.nvlink is False for run in RUNS)  # tensor parallel over PCIe


def test_every_usable_point_is_predicted_once_held_out() -> None:
    in_sample = calibration_report(None, RUNS)
    assert len(held_out()) == len(in_sample)
    assert {(p.label, p.concurrency) for p in held_out()} == {
        (p.label, p.concurrency) for p in in_sample
    }


def test_a_fit_beats_the_prior_it_starts_from_on_its_own_data() -> None:
    def error(report) -> float:
        return sum(abs(p.error) for p in report)

    assert error(calibration_report(fit(RUNS), RUNS)) < error(calibration_report(PRIOR, RUNS))


def test_the_shipped_constants_are_the_fit_on_the_whole_table() -> None:
    # 10%: a GPU profile added later brings a skipped run in (the A100 40GB sweep moves the
    # bandwidth efficiency from 0.71 to 0.76); re-fit and ship the printed constants then.
    fitted, shipped = fit(RUNS), SpeedCalibration()
    for name in FITTED:
        assert getattr(shipped, name) == pytest.approx(getattr(fitted, name), rel=0.1), name


def test_in_sample_every_point_is_within_40_percent() -> None:
    # The worst, +42%: Qwen2.5-32B over two A100s talking over PCIe at 30 in flight (the model's
    # PCIe all-reduce is a textbook figure, faster than that setup); next, +40%: a 10-request
    # burst on an H100 with 44-token replies (start-up dominates).
    report = calibration_report(None, RUNS)
    assert max(abs(p.error) for p in report) < 0.45
    assert figures(report).within_25 >= 0.85


def test_leave_one_source_out_meets_the_goal() -> None:
    # python -m launcher.sizing.speed_fit prints these figures: median 12.7%, 81% within 25%
    # (43 points, 7 sources).
    loso, in_sample = figures(held_out()), figures(calibration_report(None, RUNS))
    print(f"\nleave-one-source-out: {loso.line()}\nin sample: {in_sample.line()}")  # pytest -s
    assert loso.median <= 0.15, loso
    assert loso.within_25 >= 0.80, loso


def test_the_shipped_error_band_is_the_held_out_one() -> None:
    # python -m launcher.sizing.speed_fit prints it; re-ship it when the table changes.
    band = error_band(held_out())
    assert (band.points, band.sources) == (SPEED_ERROR_BAND.points, SPEED_ERROR_BAND.sources)
    assert band.median == pytest.approx(SPEED_ERROR_BAND.median, abs=0.01)
    assert band.under == pytest.approx(SPEED_ERROR_BAND.under, abs=0.02)
    assert band.over == pytest.approx(SPEED_ERROR_BAND.over, abs=0.02)
    assert band.under < 0 < band.over
