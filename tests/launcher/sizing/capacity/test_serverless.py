"""Serverless priced per GPU class: the model's worker, its own seconds, cold starts."""

from __future__ import annotations

import pytest

from launcher.errors import PriceError
from launcher.sizing.capacity import CapacityRequest, UsageProfile, plan_capacity
from launcher.sizing.capacity.capacity_report import render_table
from launcher.sizing.capacity.serverless import (
    billed_seconds_per_request,
    get_terms,
    load_serverless,
    plan_serverless,
    serverless_monthly_usd,
)
from launcher.sizing.gpus import GIB, get_gpu
from launcher.sizing.memory import weight_bytes
from launcher.sizing.models import load_model


def request(users: int, model: str = "7b", **fields: object) -> CapacityRequest:
    return CapacityRequest.model_validate(
        {"usage": UsageProfile(daily_users=users), "model": model, **fields}
    )


def test_every_class_names_a_gpu_profile_and_a_price() -> None:
    for terms in load_serverless().values():
        for worker in terms.classes:
            assert get_gpu(worker.gpu).key == worker.gpu
            assert 0 < worker.rate < 0.01
    assert get_terms("runpod").source.startswith("https://")
    assert get_terms("modal").cold_start.seconds(10 * GIB) == pytest.approx(95.7)


def test_the_worker_holds_the_models_weights() -> None:
    for model in ("7b", "qwen3-32b", "llama-3.1-70b", "qwen2.5-72b"):
        plan = plan_serverless(
            request(20_000, model, tensor_parallel=(1, 2, 4, 8)), load_model(model)
        )
        assert plan.worker is not None, plan.note
        spec = load_model(model)
        gpu = get_gpu(plan.gpu_key)
        per_gpu = weight_bytes(spec, plan.quant, plan.gpus_per_worker)  # type: ignore[arg-type]
        assert per_gpu < gpu.vram_bytes
        if model == "llama-3.1-70b":
            assert gpu.vram_bytes > 70 * GIB  # an 80 GB-class worker, or larger


def test_a_request_takes_the_models_own_time() -> None:
    small = plan_serverless(request(20_000, "7b"), load_model("7b"))
    big = plan_serverless(
        request(20_000, "llama-3.1-70b", tensor_parallel=(1, 2, 4, 8)), load_model("70b")
    )
    assert small.worker is not None and big.worker is not None
    # 200 tokens: a 7B on a 24 GB worker, a 70B on 80 GB-class GPUs; each at its own speed
    assert 1 < small.seconds_per_request < 5 < 2 * big.seconds_per_request
    per_request_small = small.usd_per_gpu_second * small.seconds_per_request
    per_request_big = big.usd_per_gpu_second * big.gpus_per_worker * big.seconds_per_request
    assert per_request_big > 5 * per_request_small


def test_cold_starts_weigh_at_low_traffic_and_fade_at_high() -> None:
    plan = plan_serverless(request(1_000), load_model("7b"))
    assert plan.cold_start_s > 30  # 13.5 GiB of weights at RunPod's measured load rate
    quiet = billed_seconds_per_request(plan, UsageProfile(daily_users=10))
    busy = billed_seconds_per_request(plan, UsageProfile(daily_users=1_000_000))
    assert quiet > 5 * plan.seconds_per_request
    assert busy == pytest.approx(plan.seconds_per_request, rel=0.01)
    # never more per idle period than a cold start: the timeout is set as an operator would
    assert quiet <= plan.seconds_per_request + plan.cold_start_s


def test_the_guides_terms_are_five_seconds_and_nothing_else() -> None:
    plan = plan_serverless(request(100, serverless="cost-guide"), load_model("7b"))
    assert plan.seconds_per_request == 5.0 and plan.cold_start_s == 0
    assert serverless_monthly_usd(plan, UsageProfile(daily_users=100)) == pytest.approx(15.0)


def test_a_model_no_worker_serves_says_so_and_dedicated_still_wins() -> None:
    plan = plan_capacity(request(20_000, "70b", serverless="cost-guide", tensor_parallel=(1, 2)))
    assert plan.serverless.worker is None and plan.serverless.monthly_usd is None
    assert "no cost-guide worker serves" in plan.serverless.note
    assert plan.recommendation.choice != "serverless"
    assert "serverless: no cost-guide worker" in render_table(plan)


def test_a_rate_override_prices_every_class() -> None:
    plan = plan_serverless(request(1_000, serverless_usd_per_gpu_second=0.001), load_model("7b"))
    assert plan.usd_per_gpu_second == 0.001


def test_an_unknown_provider_is_bad_input() -> None:
    with pytest.raises(PriceError, match="known: cost-guide, modal, runpod"):
        get_terms("nowhere")


def test_an_eager_worker_takes_longer_per_request() -> None:
    # --enforce-eager is the service's vLLM setting: a serverless worker runs it too, and
    # each of its steps pays the kernel launches CUDA graphs would have replayed, on every
    # worker class, so the cheapest month costs more (and may move to another class).
    model = load_model("8b")
    graphs = plan_serverless(request(20_000, "8b"), model)
    eager = plan_serverless(request(20_000, "8b", eager=True), model)
    assert eager.monthly_usd is not None and graphs.monthly_usd is not None
    assert eager.monthly_usd > graphs.monthly_usd
    same_worker = plan_serverless(
        request(20_000, "8b", eager=True, serverless_usd_per_gpu_second=0.001), model
    )
    flat = plan_serverless(request(20_000, "8b", serverless_usd_per_gpu_second=0.001), model)
    assert same_worker.worker == flat.worker
    assert same_worker.seconds_per_request > 1.2 * flat.seconds_per_request
