"""Settles the shared store has not confirmed yet, kept per key, in order, until it has.

    pending = PendingSettles(apply, delays=(0.0, 0.2, 1.0), limit=10_000, on_dropped=count)
    settle = pending.add("alice", Settle(keys, args, count_lost=True))  # before its first try
    await pending.attempt("alice", settle)   # True once the store has it; else kept, retried
    if not await pending.flush("alice"):     # before the key's next acquire: its settles first
        ...                                  # the store is still down
    pending.wake()                           # the store answered: retry the others now
    await pending.drain(within=3.0)          # at shutdown: a last try, bounded

A settle is a release (the slot freed, the unused tokens refunded) or the undo of an acquire
whose reply was lost. ``apply`` sends one to the store and returns ``False`` when the store
did not answer (it counts and logs the failure itself); the store's script is idempotent by
lease id, so a settle tried twice (a reply lost, then a retry) counts once. A settle that
fails is kept and tried again after each of ``delays``, then every ``delays[-1]`` seconds,
until the store answers: none is given up while the store is away, so no lease outlives its
request by more than the outage, and no refund is lost. The only bound is ``limit`` kept
settles (an outage long enough to fill it: the oldest is dropped and ``on_dropped`` called;
its lease expires by itself after the lease's ttl).

Nothing awaits between reading and changing the table, so it is asyncio-safe; one try of a
settle runs at a time, and callers that come meanwhile wait for its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Settle:
    """One settle script call: its Redis ``keys`` and ``args``; ``count_lost``: a lease the
    store does not know when it is applied is counted lost (a release, not an undo)."""

    keys: list[str]
    args: list[Any]
    count_lost: bool
    applied: bool = False
    trying: bool = False  # a try is under way
    tried: asyncio.Event | None = None  # made by a caller that waits for that try


class PendingSettles:
    def __init__(
        self,
        apply: Callable[[Settle], Awaitable[bool]],
        delays: Sequence[float] = (0.0, 0.2, 1.0),
        limit: int = 10_000,
        on_dropped: Callable[[], None] | None = None,
    ) -> None:
        if not delays:
            raise ValueError("delays: at least one wait before a retry")
        self._apply = apply
        self._delays = tuple(delays)
        self._limit = limit
        self._on_dropped = on_dropped
        self._by_key: dict[str, list[Settle]] = {}
        self._count = 0
        self._retrying: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return self._count

    def __contains__(self, name: object) -> bool:
        return name in self._by_key

    def add(self, name: str, settle: Settle) -> Settle:
        """Keep ``settle`` until the store has it (call before its first try)."""
        if self._count >= self._limit:
            self._drop_oldest()
        self._by_key.setdefault(name, []).append(settle)
        self._count += 1
        return settle

    async def attempt(self, name: str, settle: Settle) -> bool:
        """Try ``settle`` now, or wait for the try under way; ``True`` once it is applied.
        One that is not stays kept and is retried in the background."""
        if settle.applied:
            return True
        if settle.trying:
            if settle.tried is None:
                settle.tried = asyncio.Event()
            await settle.tried.wait()
            return settle.applied
        settle.trying = True
        try:
            if await self._apply(settle):
                settle.applied = True
                self._forget(name, settle)
        finally:  # cancelled too: the settle stays kept
            settle.trying = False
            if settle.tried is not None:
                settle.tried.set()
                settle.tried = None
            if not settle.applied:
                self._retry_soon()
        return settle.applied

    async def flush(self, name: str) -> bool:
        """Apply ``name``'s kept settles in order; ``False`` at the first the store refused."""
        for settle in list(self._by_key.get(name, ())):
            if not await self.attempt(name, settle):
                return False
        return True

    def wake(self) -> None:
        """The store answered again: retry the kept settles now rather than after the wait."""
        if self._by_key:
            self._wakeup.set()

    async def drain(self, within: float | None = None) -> None:
        """Wait until every kept settle is applied; with ``within``, for at most that many
        seconds, then stop retrying (the leases left expire by themselves)."""
        task = self._retrying
        if task is None:
            return
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.warning(
                "%d lease settles not written to the rate limiter's store; their leases "
                "expire by themselves",
                self._count,
            )

    def _forget(self, name: str, settle: Settle) -> None:
        settles = self._by_key.get(name)
        if settles is None or settle not in settles:
            return
        settles.remove(settle)
        self._count -= 1
        if not settles:
            del self._by_key[name]

    def _drop_oldest(self) -> None:
        name = next(iter(self._by_key))  # the key kept longest (insertion order)
        self._forget(name, self._by_key[name][0])
        if self._on_dropped is not None:
            self._on_dropped()

    def _retry_soon(self) -> None:
        if self._retrying is None:
            self._retrying = asyncio.create_task(self._retry())

    async def _retry(self) -> None:
        try:
            waits = iter(self._delays)
            while self._by_key:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next(waits, self._delays[-1])):
                        await self._wakeup.wait()
                for name in list(self._by_key):
                    if not await self.flush(name):
                        break  # the store is still away: wait again
        finally:
            self._retrying = None
