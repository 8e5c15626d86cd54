"""The ledger on the gateway's ``/metrics``: a collector read at each scrape, never per request.

    registry.register(LedgerCollector(ledger, budgets_of=lambda: key_store.keys))

- ``vkit_gateway_key_spent_tokens{key,period}`` and ``vkit_gateway_key_spent_dollars{key,
  period}`` -- gauges, each key's spending in the current day, week, month and in total, as
  this gateway's book has it (the ledger's last read plus its own unwritten tokens); several
  gateways sharing a ledger each show it: take ``max by (key, period)``;
- ``vkit_gateway_key_budget_used_ratio{key,period}`` -- gauge, spent / budget (the higher of
  tokens and dollars) for each key's budgets; 1 and above is refused;
- ``vkit_gateway_ledger_backlog_rows`` -- gauge, rows waiting for the database;
- ``vkit_gateway_ledger_flush_failures_total`` and ``vkit_gateway_ledger_rows_dropped_total``
  -- counters, failed writes and rows given up past ``max_backlog_rows``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.ledger.budgets import PERIODS, KeyBudgets, Spent
from gateway.ledger.writer import Ledger


class BudgetedKey(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def budgets(self) -> KeyBudgets | None: ...


class LedgerCollector(Collector):
    def __init__(self, ledger: Ledger, budgets_of: Callable[[], Iterable[BudgetedKey]]) -> None:
        self.ledger = ledger
        self.budgets_of = budgets_of

    def collect(self) -> Iterator[Metric]:
        book = self.ledger.book
        labels = ["key", "period"]
        tokens = GaugeMetricFamily(
            "vkit_gateway_key_spent_tokens", "tokens spent per key and window", labels=labels
        )
        dollars = GaugeMetricFamily(
            "vkit_gateway_key_spent_dollars", "dollars spent per key and window", labels=labels
        )
        used = GaugeMetricFamily(
            "vkit_gateway_key_budget_used_ratio", "spent / budget per key and window", labels=labels
        )
        for name in sorted(book.spent.keys() | book.unwritten.keys()):
            spent_tokens, spent_dollars = self._spent(name)
            for period in PERIODS:
                tokens.add_metric([name, period], spent_tokens[period])
                dollars.add_metric([name, period], spent_dollars[period])
        for key in self.budgets_of():
            if key.budgets is None:
                continue
            spent_tokens, spent_dollars = self._spent(key.name)
            for period, limit in key.budgets.limits():
                ratios = [spent_tokens[period] / limit.tokens] if limit.tokens else []
                ratios += [spent_dollars[period] / limit.dollars] if limit.dollars else []
                used.add_metric([key.name, period], max(ratios))
        yield tokens
        yield dollars
        yield used
        yield GaugeMetricFamily(
            "vkit_gateway_ledger_backlog_rows",
            "ledger rows waiting for the database",
            value=len(self.ledger.backlog),
        )
        yield CounterMetricFamily(
            "vkit_gateway_ledger_flush_failures",
            "ledger writes that failed (their rows kept)",
            value=self.ledger.failures,
        )
        yield CounterMetricFamily(
            "vkit_gateway_ledger_rows_dropped",
            "ledger rows given up past max_backlog_rows",
            value=self.ledger.backlog.dropped,
        )

    def _spent(self, name: str) -> tuple[dict[str, float], dict[str, float]]:
        book = self.ledger.book
        spent = book.spent.get(name) or Spent()
        extra = book.unwritten.get(name, 0)
        tokens: dict[str, float] = {p: spent.tokens.get(p, 0) + extra for p in PERIODS}
        dollars: dict[str, float] = {p: spent.dollars.get(p, 0.0) for p in PERIODS}
        return tokens, dollars
