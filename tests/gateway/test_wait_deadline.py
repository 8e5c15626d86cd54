"""The one-timer deadline on a task's waits (gateway.deadline.WaitDeadline): it ends a wait
where an ``asyncio.timeout`` around it would, and only that wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.deadline import WaitDeadline


async def bounded(waits: WaitDeadline, seconds: float, wait: float) -> str:
    """``asyncio.sleep(wait)`` under ``seconds``: "done" or "timeout"."""
    waits.begin(seconds)
    try:
        await asyncio.sleep(wait)
    except asyncio.CancelledError:
        if not waits.timed_out():
            raise
        return "timeout"
    finally:
        waits.end()
    return "done"


def deadline_here() -> WaitDeadline:
    task = asyncio.current_task()
    assert task is not None
    return WaitDeadline(task, asyncio.get_running_loop())


async def test_a_wait_past_its_deadline_is_ended_at_it() -> None:
    waits = deadline_here()
    began = time.monotonic()
    assert await bounded(waits, 0.05, 5) == "timeout"
    assert 0.04 <= time.monotonic() - began < 0.5
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    waits.close()


async def test_many_short_waits_under_one_timer_never_trip() -> None:
    """Each wait moves the deadline; the timer first armed fires mid-way and is re-armed."""
    waits = deadline_here()
    began = time.monotonic()
    while time.monotonic() - began < 0.6:  # 0.6 s of waits, each well within its 0.25 s
        assert await bounded(waits, 0.25, 0.002) == "done"
    assert await bounded(waits, 0.05, 5) == "timeout"  # the next slow one still trips
    waits.close()


async def test_time_between_waits_never_counts() -> None:
    waits = deadline_here()
    assert await bounded(waits, 0.25, 0.001) == "done"
    time.sleep(0.3)  # past the first wait's deadline, outside any wait: the timer fires late
    assert await bounded(waits, 0.25, 0.001) == "done"
    await asyncio.sleep(0.3)  # the timer fires between waits: nothing ends
    assert await bounded(waits, 0.25, 0.001) == "done"
    waits.close()


async def test_a_shorter_later_wait_is_ended_at_its_own_deadline() -> None:
    """The body read after a long first-byte bound: its shorter bound holds."""
    waits = deadline_here()
    assert await bounded(waits, 5, 0.001) == "done"  # the timer is armed 5 s out
    began = time.monotonic()
    assert await bounded(waits, 0.05, 5) == "timeout"
    assert time.monotonic() - began < 1
    waits.close()


async def test_another_cancellation_stays_a_cancellation() -> None:
    """A task cancelled for another reason (its client gone) while a wait times out."""

    async def owner() -> str:
        return await bounded(deadline_here(), 0.05, 5)

    task = asyncio.create_task(owner())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_close_disarms_the_timer() -> None:
    waits = deadline_here()
    waits.begin(0.02)
    waits.close()
    await asyncio.sleep(0.1)  # no cancellation arrives
    assert not waits.tripped
