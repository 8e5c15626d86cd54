"""A request's lease: every slot admission took for it, owned by one object, given back once.

    lease = RequestLease(bound, key_lease, reserved=tokens)  # built by gateway.admission.Gate
    ...                                                      # lease.headers: x-ratelimit-*
    await lease.settle(used_tokens)  # frees the in-flight slot, settles the key's lease; once

It holds the two slots admission takes, in the order it takes them:

- a slot of the gateway-wide in-flight bound (:class:`gateway.limits.in_flight.InFlightLimit`,
  ``max_in_flight``), when there is a bound;
- the key's lease from the limiter (requests, tokens, concurrency: :mod:`gateway.limits`), when
  the request has a key and there is a limiter, settled with the tokens really used.

Two other counts move while a request runs and are not in it, on purpose: a replica's
in-flight count (:mod:`gateway.routing.replica_in_flight`) belongs to one upstream attempt (a
retried request takes and gives back one per replica tried) and is given back when that
answer is released or aborted, before the request is billed; the ``in_flight`` gauge of
:class:`gateway.metrics.GatewayMetrics` counts exchanges in progress, for the metrics only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.limits.in_flight import InFlightLimit


class KeyLease(Protocol):
    """What the gateway uses of ``gateway.limits.Lease``."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def settle(self, used_tokens: int) -> None: ...


class RequestLease:
    """The in-flight slot (``bound``) and the key's lease (``key_lease``) of one request, each
    ``None`` when not taken; ``reserved`` is the tokens the key's lease holds (billed when an
    answer carries no usage)."""

    __slots__ = ("_bound", "_key_lease", "headers", "raw_headers", "reserved")

    def __init__(
        self, bound: InFlightLimit | None, key_lease: KeyLease | None, reserved: int = 0
    ) -> None:
        self._bound = bound
        self._key_lease = key_lease
        self.reserved = reserved
        # the success-path x-ratelimit-* headers, and as the exchange sends them
        self.headers: dict[str, str] = dict(key_lease.headers) if key_lease is not None else {}
        self.raw_headers = [(k.encode(), v.encode()) for k, v in self.headers.items()]

    async def settle(self, used_tokens: int) -> None:
        """Give back the in-flight slot and settle the key's lease with ``used_tokens``; only
        the first call does anything."""
        bound, key_lease = self._bound, self._key_lease
        self._bound = self._key_lease = None
        if bound is not None:
            bound.leave()
        if key_lease is not None:
            await key_lease.settle(used_tokens)
