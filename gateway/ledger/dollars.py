"""Dollars from the GPU bill: each group's hourly price split by each key's share of tokens.

For a replica group g (the one serving model g) and an hour h in which a gateway ran, with
price P(g, h) per hour and T(g, h) tokens (prompt + completion) served by g in h over all keys:

    dollars(k, g, h) = P(g, h) * T(k, g, h) / T(g, h)        when T(g, h) > 0
    idle(g, h)       = P(g, h)                               when T(g, h) = 0

so the dollars of an hour add up to its bill: every hour the group ran is paid by the keys
that used it in that hour, or shows as idle. (Pure: rows and prices in, dollars out.) Rows the
spill-over endpoint served (``backend`` not ``local``) used no GPU of the group: they take no
share of its price (the endpoint bills them itself).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.ledger.tally import UsageRow
from gateway.spill_settings import LOCAL

IDLE = "(idle)"  # the key name idle hours are shown under


@dataclass(slots=True)
class Split:
    """The bill of a period: dollars per (key, model, hour), and idle dollars per group."""

    by_row: dict[tuple[str, str, int], float] = field(default_factory=dict)
    idle: dict[tuple[str, int], float] = field(default_factory=dict)  # (model, hour) -> $

    def per_key(self) -> dict[str, float]:
        dollars: dict[str, float] = defaultdict(float)
        for (key, _, _), value in self.by_row.items():
            dollars[key] += value
        return dict(dollars)

    @property
    def idle_dollars(self) -> float:
        return sum(self.idle.values())

    @property
    def billed(self) -> float:
        return sum(self.by_row.values()) + self.idle_dollars


def split_bill(rows: Iterable[UsageRow], prices: Mapping[tuple[int, str], float]) -> Split:
    """The dollars of ``rows`` under ``prices`` (``{(hour, model): $ per hour}``). A row of an
    unpriced hour or model costs nothing; a priced hour no row used is idle."""
    rows = [row for row in rows if row.backend == LOCAL]
    served: dict[tuple[int, str], int] = defaultdict(int)
    for row in rows:
        served[(row.hour, row.model)] += row.tokens
    split = Split()
    for row in rows:
        price = prices.get((row.hour, row.model))
        if price is None or row.tokens == 0:
            continue
        share = row.tokens / served[(row.hour, row.model)]
        where = (row.key, row.model, row.hour)
        split.by_row[where] = split.by_row.get(where, 0.0) + price * share
    for (hour, model), price in prices.items():
        if served.get((hour, model), 0) == 0:
            split.idle[(model, hour)] = price
    return split
