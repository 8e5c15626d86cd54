"""Usage accumulated in memory, per key x model x adapter x backend x hour: the request path's
part.

    tally = UsageTally()
    tally.record("alice", "llama", "", prompt=12, completion=30, at=time.time())  # a dict update
    rows = tally.take()          # the rows so far, and a fresh tally (the writer's part)

A row is one :class:`UsageRow` per key, model, adapter, backend (``local``, or the spill-over
endpoint's name: :mod:`gateway.spill`) and hour (the hour's start, Unix seconds): a million
requests of ten keys on one model in a day are 240 rows, not a million.
:class:`Backlog` holds the rows taken but not yet written (a database down or slow) as
batches, each with an id the database records with its rows (a retry of a batch already
written is skipped). Rows merge into the newest batch while no write of it was tried and
could have committed; a batch that may have been written (its COMMIT's answer lost) is kept
as it is, its id with it, and new rows start a new batch. Bounded: past ``max_rows`` rows in
all, the oldest hours are dropped first (of the oldest batch first) and counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gateway.spill_settings import LOCAL

HOUR = 3600

RowKey = tuple[int, str, str, str, str]  # (hour, key, model, adapter, backend)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """What one key spent on one model (and adapter) in one hour, on one backend."""

    hour: int  # the hour's start, Unix seconds (UTC)
    key: str
    model: str
    adapter: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    backend: str = LOCAL  # local replicas, or the spill-over endpoint's name

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def hour_of(at: float) -> int:
    """The start of the hour ``at`` (Unix seconds) falls in."""
    return int(at // HOUR) * HOUR


class UsageTally:
    """Counts per (hour, key, model, adapter, backend): ``[requests, prompt, completion]``."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[RowKey, list[int]] = {}

    def record(
        self,
        key: str,
        model: str,
        adapter: str,
        prompt: int,
        completion: int,
        at: float,
        backend: str = LOCAL,
    ) -> None:
        row = (int(at // HOUR) * HOUR, key, model, adapter, backend)
        counts = self._counts.get(row)
        if counts is None:
            self._counts[row] = [1, prompt, completion]
        else:
            counts[0] += 1
            counts[1] += prompt
            counts[2] += completion

    def __len__(self) -> int:
        return len(self._counts)

    def take(self) -> list[UsageRow]:
        """The rows counted so far; the tally starts empty again."""
        counts, self._counts = self._counts, {}
        return list(_rows(counts.items()))


@dataclass(slots=True)
class Batch:
    """Rows written together, once: ``id`` goes into the database with them."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    counts: dict[RowKey, list[int]] = field(default_factory=dict)
    maybe_written: bool = False  # a try of it may have committed: never merged into again

    def rows(self) -> list[UsageRow]:
        return list(_rows(self.counts.items()))


class Backlog:
    """Rows taken but not yet written, in batches (:class:`Batch`), merged per (hour, key,
    model, adapter) within the newest batch while it cannot have been written; at most
    ``max_rows`` rows in all: past it, the oldest hours go first and ``dropped`` counts them."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.dropped = 0  # rows given up (their requests and tokens are lost)
        self._batches: list[Batch] = []

    def __len__(self) -> int:
        return sum(len(batch.counts) for batch in self._batches)

    def add(self, rows: Iterable[UsageRow]) -> list[UsageRow]:
        """Merge ``rows`` into the newest batch (a new one if it may have been written); the
        rows dropped to stay within ``max_rows`` (oldest hours first)."""
        rows = list(rows)
        if not rows:
            return []
        if not self._batches or self._batches[-1].maybe_written:
            self._batches.append(Batch())
        counts_of = self._batches[-1].counts
        for row in rows:
            key = (row.hour, row.key, row.model, row.adapter, row.backend)
            counts = counts_of.setdefault(key, [0, 0, 0])
            counts[0] += row.requests
            counts[1] += row.prompt_tokens
            counts[2] += row.completion_tokens
        over = len(self) - self.max_rows
        return self._drop_oldest(over) if over > 0 else []

    def _drop_oldest(self, over: int) -> list[UsageRow]:
        places = sorted(
            (key[0], age, key) for age, batch in enumerate(self._batches) for key in batch.counts
        )
        dropped = [_row(key, self._batches[age].counts.pop(key)) for _, age, key in places[:over]]
        self._batches = [batch for batch in self._batches if batch.counts]
        self.dropped += over
        return dropped

    def batches(self) -> list[tuple[str, list[UsageRow]]]:
        """Each batch's id and rows, oldest first: what the next write writes."""
        return [(batch.id, batch.rows()) for batch in self._batches]

    def rows(self) -> list[UsageRow]:
        return [row for batch in self._batches for row in batch.rows()]

    def tried(self) -> None:
        """A write of every batch may have committed: keep each as it is from now on."""
        for batch in self._batches:
            batch.maybe_written = True

    def clear(self) -> None:
        self._batches = []


def _rows(items: Iterable[tuple[RowKey, list[int]]]) -> Iterator[UsageRow]:
    for key, counts in items:
        yield _row(key, counts)


def _row(key: RowKey, counts: list[int]) -> UsageRow:
    (hour, name, model, adapter, backend), (requests, prompt, completion) = key, counts
    return UsageRow(hour, name, model, adapter, requests, prompt, completion, backend)
