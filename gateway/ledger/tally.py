"""Usage accumulated in memory, per key x model x adapter x hour: the request path's part.

    tally = UsageTally()
    tally.record("alice", "llama", "", prompt=12, completion=30, at=time.time())  # a dict update
    rows = tally.take()          # the rows so far, and a fresh tally (the writer's part)

A row is one :class:`UsageRow` per key, model, adapter and hour (the hour's start, Unix
seconds): a million requests of ten keys on one model in a day are 240 rows, not a million.
:class:`Backlog` holds the rows taken but not yet written (a database down or slow), merged
by the same key, bounded: past ``max_rows`` the oldest hours are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

HOUR = 3600

RowKey = tuple[int, str, str, str]  # (hour, key, model, adapter)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """What one key spent on one model (and adapter) in one hour."""

    hour: int  # the hour's start, Unix seconds (UTC)
    key: str
    model: str
    adapter: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def hour_of(at: float) -> int:
    """The start of the hour ``at`` (Unix seconds) falls in."""
    return int(at // HOUR) * HOUR


class UsageTally:
    """Counts per (hour, key, model, adapter): ``[requests, prompt, completion]``."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[RowKey, list[int]] = {}

    def record(
        self, key: str, model: str, adapter: str, prompt: int, completion: int, at: float
    ) -> None:
        row = (int(at // HOUR) * HOUR, key, model, adapter)
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


class Backlog:
    """Rows taken but not yet written, merged per (hour, key, model, adapter); at most
    ``max_rows`` of them: past it, the oldest hours go first and ``dropped`` counts them."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.dropped = 0  # rows given up (their requests and tokens are lost)
        self._counts: dict[RowKey, list[int]] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, rows: Iterable[UsageRow]) -> list[UsageRow]:
        """Merge ``rows`` in; the rows dropped to stay within ``max_rows`` (oldest first)."""
        for row in rows:
            key = (row.hour, row.key, row.model, row.adapter)
            counts = self._counts.setdefault(key, [0, 0, 0])
            counts[0] += row.requests
            counts[1] += row.prompt_tokens
            counts[2] += row.completion_tokens
        over = len(self._counts) - self.max_rows
        if over <= 0:
            return []
        oldest = sorted(self._counts)[:over]
        dropped = list(_rows((key, self._counts.pop(key)) for key in oldest))
        self.dropped += over
        return dropped

    def rows(self) -> list[UsageRow]:
        return list(_rows(self._counts.items()))

    def clear(self) -> None:
        self._counts = {}


def _rows(items: Iterable[tuple[RowKey, list[int]]]) -> Iterator[UsageRow]:
    for (hour, key, model, adapter), (requests, prompt, completion) in items:
        yield UsageRow(hour, key, model, adapter, requests, prompt, completion)
