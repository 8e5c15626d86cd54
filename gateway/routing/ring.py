"""A consistent-hash ring of replicas, and the bounded-load walk along it. Pure.

Each replica stands at ``virtual_nodes`` points of a 64-bit ring (blake2b of
``"<label>#<i>"``); a key belongs to the first point at or after its hash. Adding or removing
a replica moves only the keys whose points it takes or leaves: its share, about ``1/n``.

Bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
2018): a replica takes the key only while its load stays within
``ceil((1 + epsilon) x (total + 1) / n)``; else the walk passes the key to the next distinct
replica on the ring. No replica then holds more than ``(1 + epsilon)`` times the mean (plus
one), whatever the keys' skew, and a key moves only while its replica is over the bound.
Near idle that bound is tiny (3 replicas, one request in flight: 1), so a ``margin``
lets a replica take its own keys while it is at most that many requests ahead of the
least loaded one: with continuous batching a few more requests cost a replica little, and
a spill costs the prefix cache (the router's margin is 8, :class:`gateway.settings.RouterSettings`).
The margin is measured from the least loaded replica, not from zero, so that a burst on one
replica still spills to an idle one once it is that far ahead.

    >>> ring = HashRing(["a:1", "b:2"], virtual_nodes=64)
    >>> ring.walk(key_hash("tenant-1"))        # every replica once, in ring order
    ['b:2', 'a:1']
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence


def key_hash(text: str | bytes) -> int:
    """A 64-bit hash, the same in every process (unlike ``hash()``)."""
    data = text.encode() if isinstance(text, str) else text
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """The ring over ``members`` (replica labels); immutable, rebuilt when they change."""

    __slots__ = ("_owners", "_points", "members")

    def __init__(self, members: Iterable[str], virtual_nodes: int = 64) -> None:
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        points = sorted(
            (key_hash(f"{member}#{i}"), member)
            for member in self.members
            for i in range(virtual_nodes)
        )
        self._points = [point for point, _ in points]
        self._owners = [owner for _, owner in points]

    def walk(self, key: int) -> list[str]:
        """Every member once, starting with the key's owner, in ring order."""
        count = len(self.members)
        if not count:
            return []
        start = bisect.bisect_left(self._points, key)
        seen: list[str] = []
        owners = self._owners
        total = len(owners)
        for step in range(total):
            owner = owners[(start + step) % total]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == count:
                    break
        return seen


def load_bound(loads: Sequence[float], epsilon: float, margin: float = 0) -> float:
    """The most load a replica may have, this request included: ``(1 + epsilon)`` x the
    mean, rounded up, or ``margin`` above the least loaded replica, whichever is more."""
    if not loads:
        return 0.0
    mean_bound = math.ceil((1 + epsilon) * (sum(loads) + 1) / len(loads))
    return max(mean_bound, min(loads) + margin)


def bounded_pick(
    order: Sequence[str], load_of: Callable[[str], float], epsilon: float, margin: float = 0
) -> tuple[int, list[str]]:
    """Walk ``order`` (a key's ring walk) for the first member whose load plus this request
    fits the bound. Returns (its index in ``order``, ``order`` rotated to start at it); index
    0 is the key's own replica. When none fits (cannot happen with real loads, the bound
    being above the mean), the least loaded."""
    loads = [load_of(member) for member in order]
    bound = load_bound(loads, epsilon, margin)
    for index, load in enumerate(loads):
        if load + 1 <= bound:
            return index, [*order[index:], *order[:index]]
    index = min(range(len(order)), key=loads.__getitem__)
    return index, [*order[index:], *order[:index]]
