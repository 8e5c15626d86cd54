"""A time budget that long, pure-Python work checks as it goes.

    >>> deadline = Deadline.after(0.1)   # 100 ms from now, by time.monotonic
    >>> deadline.check()                 # raises DeadlineExceeded once past

Counting a prompt (:mod:`gateway.prompt_budget`) renders a chat template and tokenizes
texts; both check the deadline between steps, so a hostile body stops early and is
counted by the byte bound instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


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
