"""Which replica holds each active prefix key's cache, with the keys spread evenly. Pure but
for the clock, passed in.

Hashing alone spreads few keys unevenly: 12 tenants on 2 replicas split 9:3 or worse one
time in seven, and a replica whose cache holds 7 tenants' prompts then thrashes with 9
while the other idles. So a key's first request places it, and later ones follow the
table:

- a key seen within ``idle_ttl`` seconds goes where it went last time (its cache is there),
  whatever the ring says, for as long as that replica is ready;
- a new key (or one whose replica left) walks its ring order and is placed on the first
  replica holding at most ``ceil((total + 1) / n) - 1`` active keys: consistent hashing
  with bounded loads where the load is the number of keys (the bound of Mirrokni et al.
  with epsilon 0, always reachable), so replicas differ by at most one key, and equal
  counts leave the key to its ring owner (so gateways side by side mostly agree).

A key unused for ``idle_ttl`` is forgotten (vLLM has likely evicted its blocks by then) and
at most ``capacity`` keys are kept (least recently used first out): memory is bounded,
about 180 bytes a key (1.4 MiB for 8,192). A load spill
(:func:`gateway.routing.ring.bounded_pick`) sends one request elsewhere without moving its key.

    >>> table = KeyTable(capacity=100, idle_ttl=60.0, clock=lambda: 0.0)
    >>> table.place(1, ["a", "b"]), table.place(2, ["a", "b"]), table.place(1, ["b", "a"])
    ('a', 'b', 'a')
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence


class KeyTable:
    __slots__ = ("_clock", "_counts", "_entries", "capacity", "idle_ttl")

    def __init__(self, capacity: int, idle_ttl: float, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self.idle_ttl = idle_ttl
        self._clock = clock
        self._entries: OrderedDict[int, tuple[str, float]] = OrderedDict()  # key -> (label, used)
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def counts(self) -> dict[str, int]:
        """Active keys per replica label (after forgetting the idle ones)."""
        self._expire(self._clock())
        return dict(self._counts)

    def place(self, key: int, walk: Sequence[str]) -> str:
        """The replica for ``key`` among ``walk`` (the ready replicas in the key's ring
        order): where it was, if that one is in ``walk``; else the first with room."""
        now = self._clock()
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None and entry[0] in walk:
            self._entries[key] = (entry[0], now)
            self._entries.move_to_end(key)
            return entry[0]
        if entry is not None:
            self._drop(key)
        label = self._with_room(walk)
        self._entries[key] = (label, now)
        self._counts[label] = self._counts.get(label, 0) + 1
        while len(self._entries) > self.capacity:
            self._drop(next(iter(self._entries)))
        return label

    def _with_room(self, walk: Sequence[str]) -> str:
        counts = self._counts
        total = sum(counts.get(label, 0) for label in walk)
        bound = math.ceil((total + 1) / len(walk))
        for label in walk:
            if counts.get(label, 0) + 1 <= bound:
                return label
        return walk[0]  # cannot happen: some replica is at or below the mean

    def _expire(self, now: float) -> None:
        entries, oldest = self._entries, now - self.idle_ttl
        while entries:
            key, (_, used) = next(iter(entries.items()))
            if used > oldest:
                return
            self._drop(key)

    def _drop(self, key: int) -> None:
        label, _ = self._entries.pop(key)
        left = self._counts[label] - 1
        if left:
            self._counts[label] = left
        else:
            del self._counts[label]
