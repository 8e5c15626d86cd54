"""PendingSettles: settles the store did not confirm are kept, in order per key, retried
until it answers, and bounded."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.limits.pending_settles import PendingSettles, Settle


class Store:
    """Applies settles while ``up``; records what it applied, and each try."""

    def __init__(self, up: bool = True, delay: float = 0.0) -> None:
        self.up = up
        self.delay = delay
        self.tries = 0
        self.applied: list[str] = []

    async def apply(self, settle: Settle) -> bool:
        self.tries += 1
        await asyncio.sleep(self.delay)
        if not self.up:
            return False
        self.applied.append(settle.args[0])
        return True


def settle(lease_id: str) -> Settle:
    return Settle(keys=["k"], args=[lease_id], count_lost=True)


async def test_a_failed_settle_is_kept_and_retried_until_the_store_answers() -> None:
    store = Store(up=False)
    pending = PendingSettles(store.apply, delays=(0.0, 0.01))
    kept = pending.add("alice", settle("a1"))
    assert not await pending.attempt("alice", kept)
    await asyncio.sleep(0.1)
    assert store.tries > 3 and "alice" in pending  # still away: never given up
    store.up = True
    async with asyncio.timeout(2):
        await pending.drain()
    assert store.applied == ["a1"] and len(pending) == 0 and "alice" not in pending


async def test_flush_applies_a_keys_settles_in_order_and_stops_at_a_refusal() -> None:
    store = Store(up=False)
    pending = PendingSettles(store.apply, delays=(60.0,))
    for lease_id in ("a1", "a2"):
        await pending.attempt("alice", pending.add("alice", settle(lease_id)))
    tries = store.tries
    assert not await pending.flush("alice")
    assert store.tries == tries + 1  # stopped at the first
    store.up = True
    pending.wake()
    assert await pending.flush("alice")
    assert store.applied == ["a1", "a2"]
    await pending.drain()


async def test_a_second_caller_waits_for_the_try_under_way() -> None:
    store = Store(delay=0.05)
    pending = PendingSettles(store.apply)
    kept = pending.add("alice", settle("a1"))
    first = asyncio.create_task(pending.attempt("alice", kept))
    await asyncio.sleep(0)
    assert await pending.flush("alice")  # the next acquire: waits for the release under way
    assert await first
    assert store.tries == 1 and store.applied == ["a1"]


async def test_the_oldest_is_dropped_beyond_the_limit() -> None:
    dropped: list[int] = []
    store = Store(up=False)
    pending = PendingSettles(
        store.apply, delays=(60.0,), limit=2, on_dropped=lambda: dropped.append(1)
    )
    for name in ("alice", "bob", "carol"):
        pending.add(name, settle(name))
    assert len(pending) == 2 and dropped == [1]
    assert "alice" not in pending and "carol" in pending


async def test_drain_within_stops_retrying(caplog: pytest.LogCaptureFixture) -> None:
    store = Store(up=False)
    pending = PendingSettles(store.apply, delays=(0.0, 0.01))
    await pending.attempt("alice", pending.add("alice", settle("a1")))
    with caplog.at_level(logging.WARNING, logger="gateway.limits.pending_settles"):
        await pending.drain(within=0.05)
    assert "1 lease settles not written" in caplog.text
    tries = store.tries
    await asyncio.sleep(0.05)
    assert store.tries == tries  # no more tries
