"""Dollars from the GPU bill: each key's share of a group's tokens in an hour, idle shown."""

from __future__ import annotations

import pytest

from gateway.ledger import UsageRow, split_bill

H = 1_767_225_600


def test_a_synthetic_hour_adds_up_to_the_gpu_bill() -> None:
    rows = [
        UsageRow(H, "alice", "llama", "", 10, 6000, 2000),  # 8000 of 10000 tokens
        UsageRow(H, "bob", "llama", "", 3, 1000, 1000),  # 2000
        UsageRow(H, "bob", "qwen", "", 1, 10, 0),  # qwen's only user this hour
    ]
    prices = {(H, "llama"): 4.0, (H, "qwen"): 1.5, (H + 3600, "llama"): 4.0}
    split = split_bill(rows, prices)
    assert split.per_key() == pytest.approx({"alice": 3.2, "bob": 0.8 + 1.5})
    assert split.idle == {("llama", H + 3600): 4.0}  # a priced hour nobody used: its own line
    assert split.billed == pytest.approx(sum(prices.values()))


def test_an_unpriced_model_costs_nothing() -> None:
    split = split_bill([UsageRow(H, "a", "other", "", 1, 5, 5)], {(H, "llama"): 2.0})
    assert split.per_key() == {}
    assert split.idle == {("llama", H): 2.0}
