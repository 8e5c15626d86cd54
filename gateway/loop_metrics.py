"""Lean Prometheus metrics for the request path: plain values, written on the event loop only.

prometheus_client takes a lock and validates the call on every ``inc`` and ``observe``, and a
histogram's ``observe`` walks its buckets in Python: one request's samples cost 7.5-13 us that
way and ~2 us here (``bench/metric_calls.py``, a loaded 2-core VM, 2026-12-06), for locks that
guard nothing on the request path (its every sample is written by the event loop's thread).
The kinds here keep the API the call sites use (``family.labels(*values).inc(n)``,
``.observe(v)``; an unlabelled family's one series is ``labels()``, and an unlabelled gauge
takes ``inc``/``dec``/``set`` itself) with values in
plain attributes, and each family is a custom collector (prometheus_client's documented
``registry.register(collector)``) that renders its series exactly as prometheus_client's own
kind of the same name, type, help and label names does: the same samples in the same order
(``_total`` and ``_created`` for counters; cumulative ``_bucket`` series with ``le`` formatted
as prometheus_client formats it, ``_count``, ``_sum`` and ``_created`` for histograms), and
``_created`` only when prometheus_client exposes it (``PROMETHEUS_DISABLE_CREATED_SERIES``).

The contract that makes dropping the locks safe: **one writing thread** (the event loop's).
A value written from another thread (a worker thread, a ledger thread) must stay a
prometheus_client metric. Reads may come from anywhere: a scrape copies each family's series
before it walks them, as prometheus_client does under its lock.

    requests = LoopCounter("vkit_gateway_requests", "Requests answered", ("key",), registry)
    requests.labels("alice").inc()
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

# (suffix, the sample's own labels, value): one sample of a series, as a family renders it.
SampleRow = tuple[str, dict[str, str], float]


def _created_series_on() -> bool:
    """Whether prometheus_client exposes ``_created`` series now (its environment switch, and
    its ``disable_created_metrics()``), read at scrape time as its own metrics read it."""
    return bool(prometheus_metrics._use_created)


class CounterValue:
    """One counter series: a float that only goes up."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:  # prometheus_client's refusal, kept: a caller may rely on it
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount

    def samples(self) -> list[SampleRow]:
        rows: list[SampleRow] = [("_total", {}, self.value)]
        if _created_series_on():
            rows.append(("_created", {}, self.created))
        return rows


class GaugeValue:
    """One gauge series: a float that goes up and down."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def samples(self) -> list[SampleRow]:
        return [("", {}, self.value)]


class HistogramValue:
    """One histogram series: a count per bucket (not cumulative until rendered) and a sum."""

    __slots__ = ("_bounds", "_le", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...], le: tuple[str, ...]) -> None:
        self._bounds = bounds
        self._le = le
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        bounds = self._bounds
        bucket = bisect_left(bounds, amount)  # the first bound >= amount (the last is +Inf)
        if amount <= bounds[bucket]:  # False only for NaN, which no bucket counts
            self.counts[bucket] += 1

    def samples(self) -> list[SampleRow]:
        rows: list[SampleRow] = []
        total = 0.0
        for le, count in zip(self._le, list(self.counts), strict=True):
            total += count
            rows.append(("_bucket", {"le": le}, total))
        rows.append(("_count", {}, total))
        if self._bounds[0] >= 0:
            rows.append(("_sum", {}, self.sum))
        if _created_series_on():
            rows.append(("_created", {}, self.created))
        return rows


SeriesT = TypeVar("SeriesT", CounterValue, GaugeValue, HistogramValue)


class LoopFamily(Collector, Generic[SeriesT]):
    """A metric family: its series by label values, rendered on collect. Registered on
    ``registry`` when built, in the place a prometheus_client metric would take."""

    _type = ""
    _series_kind: Any = None  # the series' class, when it takes no argument

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], SeriesT] = {}
        if not self._labelnames:  # an unlabelled family is one series, made now
            self._only: SeriesT = self._new_series()
            self._series[()] = self._only
        registry.register(self)

    def _new_series(self) -> SeriesT:
        return self._series_kind()

    def labels(self, *values: object) -> SeriesT:
        """The series of these label values (made on first use, as prometheus_client's);
        an unlabelled family's one series for ``labels()``."""
        series = self._series.get(values)  # type: ignore[arg-type]  # str values: the hit
        if series is None:
            series = self._add(values)
        return series

    def _add(self, values: tuple[object, ...]) -> SeriesT:
        if not self._labelnames:
            raise ValueError(f"No label names were set when constructing {self._name}")
        if len(values) != len(self._labelnames):
            raise ValueError("Incorrect label count")
        key = tuple(str(value) for value in values)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._new_series()
        return series

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._documentation, self._type)]

    def collect(self) -> list[Metric]:
        metric = Metric(self._name, self._documentation, self._type)
        names = self._labelnames
        # One C call copies the series (dict.copy(), as prometheus_client copies its own under
        # its lock): list(items()) would walk the live dict, and a collection the garbage
        # collector starts while it builds the list may run Python code that lets the loop's
        # thread add a series mid-walk.
        for values, series in self._series.copy().items():
            labels = dict(zip(names, values, strict=True))
            for suffix, own, value in series.samples():
                metric.add_sample(self._name + suffix, {**labels, **own}, value)
        return [metric]


class LoopCounter(LoopFamily[CounterValue]):
    """A counter (``name`` without ``_total``, as prometheus_client names its family)."""

    _type = "counter"
    _series_kind = CounterValue


class LoopGauge(LoopFamily[GaugeValue]):
    """A gauge (unlabelled: ``inc``, ``dec`` and ``set`` on the family itself)."""

    _type = "gauge"
    _series_kind = GaugeValue

    def inc(self, amount: float = 1) -> None:
        self._only.inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._only.dec(amount)

    def set(self, value: float) -> None:
        self._only.set(value)


class LoopHistogram(LoopFamily[HistogramValue]):
    """A histogram over ``buckets`` (+Inf added, as prometheus_client adds it)."""

    _type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds[-1] != INF:
            bounds.append(INF)
        self._bounds = tuple(bounds)
        self._le = tuple(floatToGoString(bound) for bound in bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new_series(self) -> HistogramValue:
        return HistogramValue(self._bounds, self._le)
