"""The configuration search: quantization x tensor parallel x GPU x price."""

from __future__ import annotations

import pytest

from launcher.sizing.capacity import CapacityRequest, UsageProfile, parse_priced_gpu, plan_capacity
from launcher.sizing.capacity.capacity_plan import CapacityPlan
from launcher.sizing.capacity.capacity_report import render_table
from launcher.sizing.capacity.guide_rows import GUIDE_ROWS, implied_configuration
from launcher.sizing.capacity.search import parse_allowed
from launcher.sizing.capacity.throughput import users_per_gpu

ALL_TP = (1, 2, 4, 8)


def plan(users: int, **fields: object) -> CapacityPlan:
    request = CapacityRequest.model_validate({"usage": UsageProfile(daily_users=users), **fields})
    return plan_capacity(request)


def option(result: CapacityPlan, label: str):
    return next(o for o in result.options if o.label == label)


def test_the_issue_70b_case_now_finds_fleets() -> None:
    # Before: every GPU "does-not-fit" (only fp16 on one GPU was tried) and serverless.
    result = plan(20_000, model="llama-3.1-70b", tensor_parallel=ALL_TP)
    h100 = option(result, "h100-sxm")
    assert h100.gpus is not None and h100.tensor_parallel >= 2
    assert h100.fleet("fp16").startswith(f"{h100.gpus}x h100-sxm TP")
    reasons = {r.config: r.reason for r in h100.rejected}
    assert reasons["TP1 fp16"] == "does-not-fit"


def test_allowed_quantization_wins_when_it_is_cheaper() -> None:
    base = plan(50_000, model="llama-3.1-70b", tensor_parallel=ALL_TP)
    fp8 = plan(50_000, model="llama-3.1-70b", tensor_parallel=ALL_TP, allow_quant=("fp8",))
    h100_base, h100_fp8 = option(base, "h100-sxm"), option(fp8, "h100-sxm")
    assert h100_fp8.quant == "fp8"
    assert (h100_fp8.monthly_usd or 0) < (h100_base.monthly_usd or 0)
    assert any("FP8" in note for note in fp8.quality_notes)
    assert not base.quality_notes  # fp16 only: nothing to warn about


def test_int4_only_when_allowed_and_with_the_guides_quality_figure() -> None:
    without = plan(20_000, model="llama-3.1-70b", tensor_parallel=ALL_TP, allow_quant=("fp8",))
    assert all(o.quant != "awq" for o in without.options)
    allowed = parse_allowed("int4,fp8")
    assert allowed == ("awq", "gptq", "fp8")
    with_int4 = plan(20_000, model="llama-3.1-70b", tensor_parallel=ALL_TP, allow_quant=allowed)
    assert any(o.quant == "awq" for o in with_int4.options)
    assert any("<3% quality loss" in note for note in with_int4.quality_notes)


def test_fp8_on_an_a100_is_searched_as_weight_only() -> None:
    # Before: "TP1 fp8: unsupported" (FP8 W8A8 needs Ada/Hopper); vLLM runs it with FP8 Marlin.
    gpus = [parse_priced_gpu("a100-80gb=1.5")]
    request = CapacityRequest(
        usage=UsageProfile(daily_users=10_000), model="8b", quant="fp8", tensor_parallel=(1, 2)
    )
    plan = plan_capacity(request, options=gpus)
    a100 = plan.options[0]
    assert (a100.quant, a100.tensor_parallel, a100.gpus) == ("fp8", 1, 1)
    assert a100.limited_by != "unsupported" and a100.users_per_gpu > 0
    assert any("a100-80gb: weight-only (FP8 Marlin" in note for note in plan.quality_notes)


def test_a_quantization_without_checkpoint_is_out() -> None:
    request = CapacityRequest(
        usage=UsageProfile(daily_users=10_000), model="mistral-7b-v0.3", allow_quant=("awq",)
    )
    rtx = plan_capacity(request, options=[parse_priced_gpu("rtx4090")]).options[0]
    assert rtx.quant == "fp16"
    out = {r.config: r for r in rtx.rejected}
    assert out["TP1 awq"].reason == "no-checkpoint" and "llm-compressor" in out["TP1 awq"].detail


def test_ties_keep_the_smaller_replica_and_the_better_quality() -> None:
    # 100,000 DAU on RTX 3090s: TP2 and TP4 both need 4 GPUs; the smaller replica stays.
    result = plan(100_000, tensor_parallel=ALL_TP)
    rtx = option(result, "rtx3090")
    assert (rtx.gpus, rtx.tensor_parallel, rtx.quant) == (4, 2, "fp16")
    assert round(rtx.monthly_usd or 0) == 1_123
    assert {r.config: r.reason for r in rtx.rejected}["TP4 fp16"] == "same-cost"


def test_redundancy_adds_whole_replicas() -> None:
    request = dict(model="llama-3.1-70b", tensor_parallel=(2,), allow_quant=("fp8",))
    plain = option(plan(20_000, **request), "h100-sxm")
    spare = option(plan(20_000, **request, spares=1), "h100-sxm")
    assert plain.tensor_parallel == spare.tensor_parallel == 2
    assert (spare.gpus or 0) == (plain.gpus or 0) + 2


def test_context_the_service_must_offer_is_honoured() -> None:
    short = option(plan(10_000, model="8b"), "rtx4090")
    long = option(plan(10_000, model="8b", context=100_000), "rtx4090")
    assert short.gpus is not None and long.gpus is None and long.limited_by == "does-not-fit"


def test_table_names_the_winner_and_why_the_others_are_out() -> None:
    text = render_table(plan(20_000, model="llama-3.1-70b", tensor_parallel=ALL_TP))
    assert "h100-sxm TP" in text and "wins; out: does-not-fit: TP1 fp16" in text
    assert "searched fp16 x TP 1, 2, 4, 8" in text


@pytest.mark.parametrize("row", GUIDE_ROWS, ids=lambda r: f"{r.model}-{r.gpu}")
def test_each_guide_row_has_a_configuration_it_must_mean(row) -> None:
    implied = implied_configuration(row)
    assert implied is not None
    # 70B on one H100 at the row's 30.8 tok/s: FP8 decodes one stream at ~31 tok/s (measured:
    # 32.1 ms median TPOT, docs/gpus-and-costs.md#throughput-table), just enough: FP8 it is.
    expected = {("70b", "h100-sxm"): "fp8", ("70b", "h200"): "fp8", ("13b", "l40s"): "awq"}
    assert implied.quant == expected.get((row.model, row.gpu), "fp16")


def test_impossible_guide_rows_are_explained_in_the_report() -> None:
    result = plan(20_000, model="70b", tensor_parallel=ALL_TP)
    assert any("70B h100-sxm" in note and "must mean fp8" in note for note in result.guide_notes)
    assert "note: the cost guide's row" in render_table(result)


def test_users_per_gpu_is_the_number_the_planner_uses() -> None:
    result = plan(10_000, model="8b", quant="awq")
    assert option(result, "rtx4090").users_per_replica == users_per_gpu("rtx4090", "8b", "awq")
