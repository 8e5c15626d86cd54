"""Time budgets: one that long, pure-Python work checks as it goes, and one on a task's waits.

    >>> deadline = Deadline.after(0.1)   # 100 ms from now, by time.monotonic
    >>> deadline.check()                 # raises DeadlineExceeded once past

Counting a prompt (:mod:`gateway.prompt_budget`) renders a chat template and tokenizes
texts; both check the deadline between steps, so a hostile body stops early and is
counted by the byte bound instead.

:class:`WaitDeadline` bounds each of a task's waits on the upstream (the response head, the
body, each read of a stream) as an ``asyncio.timeout`` around each wait would, with one
timer for all of them: each wait only moves the deadline (a float), and the timer, when it
fires before the wait in progress is due, is re-armed at that wait's deadline. An
``asyncio.timeout`` costs a timer armed and cancelled per wait (~6 us on uvloop; a stream's
reads paid two reschedules each, ~18% of its cost).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class DeadlineExceeded(Exception):
    """The work's budget ran out before it was done."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """The moment ``at`` on ``clock``, past which :meth:`check` raises."""

    at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def check(self) -> None:
        if self.clock() >= self.at:
            raise DeadlineExceeded(f"past the deadline by {self.clock() - self.at:.3f} s")


class WaitDeadline:
    """Cancels ``owner`` when a wait marked by :meth:`begin` is not over (:meth:`end`) by its
    deadline. The ``CancelledError`` then comes out of that wait, where :meth:`timed_out`
    tells it from any other cancellation (and takes it back), as ``asyncio.timeout``'s exit
    does: a task also being cancelled for another reason (its client gone) stays cancelled.

        waits.begin(limit)
        try:
            chunk = await read()
        except asyncio.CancelledError:
            if not waits.timed_out():
                raise
            ...  # the wait took over ``limit`` seconds
        finally:
            waits.end()
    """

    __slots__ = ("_armed", "_at", "_base", "_handle", "_owner", "loop", "tripped")

    def __init__(self, owner: asyncio.Task[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tripped = False
        self._owner = owner
        self._base = owner.cancelling()  # cancellations under way before this deadline's
        self._at: float | None = None  # loop time by which the wait in progress must be over
        self._armed = 0.0  # loop time the timer is armed at
        self._handle: asyncio.TimerHandle | None = None

    def begin(self, seconds: float) -> None:
        """A wait starts that must be over within ``seconds``."""
        at = self._at = self.loop.time() + seconds
        if self._handle is None or at < self._armed:
            if self._handle is not None:
                self._handle.cancel()
            self._armed = at
            self._handle = self.loop.call_at(at, self._fire)

    def end(self) -> None:
        """The wait in progress is over (or never began)."""
        self._at = None

    def timed_out(self) -> bool:
        """After a ``CancelledError`` out of a wait: whether it was this deadline's (then taken
        back, unless the task is being cancelled for another reason as well)."""
        if not self.tripped:
            return False
        self.tripped = False
        return self._owner.uncancel() <= self._base

    def close(self) -> None:
        """No more waits: the timer goes."""
        self._at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        at = self._at
        if at is None:  # between waits: the next one arms the timer again
            return
        if at > self._armed:  # a later wait moved the deadline: not due yet
            self._armed = at
            self._handle = self.loop.call_at(at, self._fire)
            return
        if self._owner.cancelling() > self._base:  # ending already (the client went away)
            return
        self.tripped = True
        self._owner.cancel()
