"""The ledger on ``/metrics``: each key's spending, budget use and the backlog, at a scrape."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.ledger import KeyBudgets, LedgerCollector, Limit
from gateway.ledger.budgets import Spent
from tests.gateway.doubles import Key
from tests.gateway.ledger_stores import a_ledger


def test_a_scrape_shows_spending_budget_use_and_the_backlog(tmp_path: Path) -> None:
    ledger = a_ledger(f"sqlite:///{tmp_path / 'usage.sqlite3'}", started=False)
    ledger.book.spent["alice"] = Spent(tokens={"month": 300, "total": 900}, dollars={"month": 2})
    ledger.record("alice", "m", 50, 50)  # not yet written: counted in every window
    keys = [Key("alice", budgets=KeyBudgets(month=Limit(tokens=1000, dollars=4))), Key("bob")]
    registry = CollectorRegistry()
    registry.register(LedgerCollector(ledger, lambda: keys))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("vkit_gateway_key_spent_tokens", key="alice", period="month") == 400
    assert value("vkit_gateway_key_spent_tokens", key="alice", period="total") == 1000
    assert value("vkit_gateway_key_spent_dollars", key="alice", period="month") == 2
    # the higher of 400/1000 tokens and $2/$4
    assert value("vkit_gateway_key_budget_used_ratio", key="alice", period="month") == 0.5
    assert value("vkit_gateway_key_budget_used_ratio", key="bob", period="month") is None
    assert value("vkit_gateway_ledger_backlog_rows") == 0
    assert value("vkit_gateway_ledger_flush_failures_total") == 0
    assert value("vkit_gateway_ledger_rows_dropped_total") == 0
