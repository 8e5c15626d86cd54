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
at most ``capacity`` keys are kept: memory is bounded, about 325 bytes a key (2.6 MiB for
8,192). A load spill (:func:`gateway.routing.ring.bounded_pick`) sends one request elsewhere
without moving its key.

Each entry belongs to the tenant (API key name) that used it last, and a full table makes
room by each tenant's share: a tenant holding at least ``capacity / tenants`` entries (the
tenants with an entry) replaces its own least recently used one; a tenant below that takes
the least recently used entry of the tenant holding the most. So one key sending one-off
prefixes turns over its own share and no other tenant's: a tenant loses entries to others
only while it holds the most (``docs/gateway-keys.md#each-keys-share-of-the-routing-key-table``).

    >>> table = KeyTable(capacity=100, idle_ttl=60.0, clock=lambda: 0.0)
    >>> table.place(1, ["a", "b"]), table.place(2, ["a", "b"]), table.place(1, ["b", "a"])
    ('a', 'b', 'a')
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence


class KeyTable:
    __slots__ = ("_clock", "_counts", "_entries", "_tenants", "capacity", "idle_ttl")

    def __init__(self, capacity: int, idle_ttl: float, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self.idle_ttl = idle_ttl
        self._clock = clock
        # key -> (replica label, last used, tenant), least recently used first
        self._entries: OrderedDict[int, tuple[str, float, str]] = OrderedDict()
        self._counts: dict[str, int] = {}  # replica label -> its keys
        self._tenants: dict[str, OrderedDict[int, None]] = {}  # tenant -> its keys, LRU first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def counts(self) -> dict[str, int]:
        """Active keys per replica label (after forgetting the idle ones)."""
        self._expire(self._clock())
        return dict(self._counts)

    def tenant_counts(self) -> dict[str, int]:
        """Active keys per tenant (after forgetting the idle ones)."""
        self._expire(self._clock())
        return {tenant: len(keys) for tenant, keys in self._tenants.items()}

    def place(self, key: int, walk: Sequence[str], tenant: str = "") -> str:
        """The replica for ``key`` among ``walk`` (the ready replicas in the key's ring
        order): where it was, if that one is in ``walk``; else the first with room.
        ``tenant`` (the API key's name) owns the entry from now on."""
        now = self._clock()
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None and entry[0] in walk:
            self._entries[key] = (entry[0], now, tenant)
            self._entries.move_to_end(key)
            if entry[2] == tenant:
                self._tenants[tenant].move_to_end(key)
            else:
                self._disown(key, entry[2])
                self._tenants.setdefault(tenant, OrderedDict())[key] = None
            return entry[0]
        if entry is not None:
            self._drop(key)
        if len(self._entries) >= self.capacity:
            self._make_room(tenant)
        label = self._with_room(walk)
        self._entries[key] = (label, now, tenant)
        self._counts[label] = self._counts.get(label, 0) + 1
        self._tenants.setdefault(tenant, OrderedDict())[key] = None
        return label

    def _make_room(self, tenant: str) -> None:
        """Drop one entry for ``tenant``'s new one: its own least recently used while it
        holds its share or more, else the least recently used of the tenant holding most."""
        tenants = self._tenants
        mine = len(tenants.get(tenant, ()))
        victim = tenant
        if mine * len(tenants) < self.capacity:  # below its share (O(tenants), not per spam)
            victim = max(tenants, key=lambda t: len(tenants[t]))
        self._drop(next(iter(tenants[victim])))

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
            key, (_, used, _) = next(iter(entries.items()))
            if used > oldest:
                return
            self._drop(key)

    def _drop(self, key: int) -> None:
        label, _, tenant = self._entries.pop(key)
        self._disown(key, tenant)
        left = self._counts[label] - 1
        if left:
            self._counts[label] = left
        else:
            del self._counts[label]

    def _disown(self, key: int, tenant: str) -> None:
        keys = self._tenants[tenant]
        del keys[key]
        if not keys:
            del self._tenants[tenant]
