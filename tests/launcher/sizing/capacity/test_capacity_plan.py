"""Recommendation tiers, crossover, redundancy and the cost arithmetic."""

from __future__ import annotations

import pytest

from launcher.errors import InvalidInput
from launcher.sizing.capacity import CapacityRequest, UsageProfile, parse_priced_gpu, plan_capacity
from launcher.sizing.capacity.capacity_plan import CapacityPlan
from launcher.sizing.capacity.capacity_report import render_table
from launcher.sizing.capacity.costs import (
    breakeven_busy_share,
    default_priced_gpus,
    gpus_needed,
    serverless_monthly_cost,
)
from launcher.sizing.capacity.recommend import crossover_users
from launcher.sizing.capacity.serverless import serverless_monthly_usd
from launcher.sizing.capacity.usage import peak_concurrency


def plan_for(daily_users: int, **fields: object) -> CapacityPlan:
    request = CapacityRequest.model_validate(
        {"usage": UsageProfile(daily_users=daily_users), "serverless": "cost-guide", **fields}
    )
    return plan_capacity(request)


@pytest.mark.parametrize("daily_users", [100, 1_000])
def test_serverless_under_about_1000_users(daily_users: int) -> None:
    # the guide's rule of thumb, at the guide's serverless terms
    rec = plan_for(daily_users).recommendation
    assert rec.choice == "serverless"
    assert "serverless" in rec.reason and "\n" not in rec.reason


def test_a_single_rtx4090_at_10000_users() -> None:
    rec = plan_for(10_000).recommendation
    assert rec.choice == "1x rtx4090"
    assert "--redundancy" in rec.reason


def test_several_gpus_behind_a_load_balancer_beyond() -> None:
    rec = plan_for(100_000).recommendation
    count = int(rec.choice.split("x", 1)[0])
    assert count >= 2
    assert "load balancer" in rec.reason


def test_redundancy_adds_a_spare_gpu_to_every_option() -> None:
    plain, spare = plan_for(10_000), plan_for(10_000, spares=1)
    assert sum(a.gpus is not None for a in plain.options) >= 5
    for a, b in zip(plain.options, spare.options, strict=True):
        if a.gpus is None:  # too slow for 40 tok/s (an L4's 300 GB/s): no fleet to add to
            assert b.gpus is None
            continue
        assert b.gpus == a.gpus + 1
        assert b.monthly_usd == pytest.approx((a.monthly_usd or 0) * (a.gpus + 1) / a.gpus)


def test_crossover_is_where_serverless_starts_to_cost_more() -> None:
    plan = plan_for(1_000)
    rec = plan.recommendation
    assert rec.crossover_users is not None and 1_000 < rec.crossover_users < 10_000
    rtx = next(o for o in plan.options if o.label == rec.crossover_option)
    rate = plan.serverless.usd_per_gpu_second

    def serverless(dau: int) -> float:
        return serverless_monthly_cost(plan.usage.model_copy(update={"daily_users": dau}), rate)

    at = plan.usage.model_copy(update={"daily_users": rec.crossover_users})
    assert serverless_monthly_usd(plan.serverless, at) == pytest.approx(
        serverless(rec.crossover_users)
    )

    assert serverless(rec.crossover_users) >= (rtx.monthly_usd or 0) * (1 - 1e-9)
    assert serverless(rec.crossover_users - 1) < (rtx.monthly_usd or 0)
    assert rec.crossover_busy_share == pytest.approx(breakeven_busy_share(0.39, rate), rel=1e-3)


def test_crossover_accounts_for_more_gpus_and_spares() -> None:
    usage = UsageProfile(daily_users=1)
    plan = plan_for(50_000, spares=1)
    rtx = next(o for o in plan.options if o.label == "rtx4090")
    users = crossover_users(
        usage, rtx, spares=1, serverless=lambda at: serverless_monthly_cost(at, 1.2 / 3600)
    )
    assert users is not None
    at = usage.model_copy(update={"daily_users": users})
    fleet = gpus_needed(peak_concurrency(at), rtx.users_per_gpu, spares=1)
    assert serverless_monthly_cost(at, 1.2 / 3600) >= fleet * 0.39 * 720


def test_no_crossover_when_serverless_is_cheaper_at_any_scale() -> None:
    plan = plan_for(1_000, serverless_usd_per_gpu_second=1e-7)
    assert plan.recommendation.crossover_users is None
    assert plan.recommendation.choice == "serverless"


def test_a_model_that_fits_nowhere_says_so() -> None:
    request = CapacityRequest(usage=UsageProfile(daily_users=5_000), model="70b", quant="fp16")
    plan = plan_capacity(request, options=[parse_priced_gpu("rtx4090"), parse_priced_gpu("l40s")])
    assert all(o.gpus is None and o.limited_by == "does-not-fit" for o in plan.options)
    assert "runs on none" in plan.recommendation.reason


def test_gpus_needed_rounds_up_and_keeps_one() -> None:
    assert gpus_needed(0.01, users_per_gpu=10, spares=0) == 1
    assert gpus_needed(10.0, users_per_gpu=10, spares=0) == 1
    assert gpus_needed(10.5, users_per_gpu=10, spares=1) == 3


def test_priced_gpus_cover_every_provider() -> None:
    labels = [o.label for o in default_priced_gpus()]
    assert {"rtx4090", "l40s", "h100-sxm", "h100-sxm@aws"} <= set(labels)
    assert parse_priced_gpu("l4=0.8").usd_per_hour == 0.8
    assert parse_priced_gpu("h100@aws").usd_per_hour == 8.46


@pytest.mark.parametrize("spec", ["a40", "h100@nowhere", "rtx4090=abc", "rtx4090=-1", "tpu-v9"])
def test_bad_gpu_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(InvalidInput):
        parse_priced_gpu(spec)


@pytest.mark.parametrize(
    "fields",
    [
        {"daily_users": 0},
        {"daily_users": -5},
        {"daily_users": 10, "peak_share": 1.5},
        {"daily_users": 10, "peak_share": 0},
        {"daily_users": 10, "user_tok_s": 0},
    ],
)
def test_bad_usage_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        UsageProfile.model_validate(fields)


def test_each_answer_carries_the_error_band_and_its_pessimistic_gpu_count() -> None:
    from launcher.sizing.speed_band import SPEED_ERROR_BAND, ErrorBand

    request = CapacityRequest(usage=UsageProfile(daily_users=100_000), tensor_parallel=(1, 2))
    gpus = [parse_priced_gpu("l40s"), parse_priced_gpu("a100-80gb")]
    plan = plan_capacity(request, options=gpus)
    assert plan.speed_band == SPEED_ERROR_BAND
    for o in plan.options:
        assert o.gpus is not None and o.gpus_pessimistic is not None
        assert o.gpus_pessimistic >= o.gpus
    # a band twice as wide on the slow side takes at least as many GPUs, and more somewhere
    wide = ErrorBand(points=1, sources=1, median=0.3, under=-0.3, over=0.9)
    wider = plan_capacity(request, options=gpus, band=wide)
    pairs = [
        (a.gpus_pessimistic or 0, b.gpus_pessimistic or 99)
        for a, b in zip(plan.options, wider.options, strict=True)
    ]
    assert all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)
    text = render_table(plan)
    assert "how sure: speed model:" in text and "at the pessimistic end" in text
