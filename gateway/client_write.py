"""The client-write deadline: a client that takes no write within ``timeouts.client_write``
(it stopped reading, its socket open) is given up on.

The server's ``send`` waits while the socket's write buffer is full (uvicorn's flow
control), so a write that waits is where such a client shows. :class:`WriteWatch` is one
timer per exchange, re-armed only when it fires, not one per write: an ``asyncio.timeout``
around each send cost ~5 us of CPU here, some 10% of a 16-chunk stream's whole cost.
:class:`gateway.relay.Relay` sets ``since`` around each write; the exchange answers 499 and
counts ``client_write_timeouts`` when the watch has ``tripped``.
"""

from __future__ import annotations

import asyncio
from typing import Any


class WriteWatch:
    """Cancels ``owner`` once a write to the client has waited ``limit`` seconds."""

    __slots__ = ("_handle", "_limit", "_owner", "loop", "since", "tripped")

    def __init__(self, owner: asyncio.Task[Any], limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.since: float | None = None  # loop time at which the write in progress began
        self.tripped = False
        self._owner = owner
        self._limit = limit
        self._handle = self.loop.call_later(limit, self._check)

    def _check(self) -> None:
        if self._owner.cancelling():  # ending already (the client went away)
            return
        now, since = self.loop.time(), self.since
        if since is not None and now - since >= self._limit - 0.001:
            self.tripped = True
            self._owner.cancel()
            return
        self._handle = self.loop.call_at(
            (now if since is None else since) + self._limit, self._check
        )

    def cancel(self) -> None:
        self._handle.cancel()
