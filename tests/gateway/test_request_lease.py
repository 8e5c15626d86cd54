"""RequestLease: the in-flight slot and the key's lease of one request, given back once."""

from __future__ import annotations

from gateway.limits.in_flight import InFlightLimit
from gateway.request_lease import RequestLease
from tests.gateway.doubles import RecordedLease


async def test_settling_frees_the_slot_and_settles_the_key_lease_once() -> None:
    bound = InFlightLimit(1)
    assert bound.enter()
    key_lease = RecordedLease(reserved=40)
    lease = RequestLease(bound, key_lease, reserved=40)
    assert lease.headers == {"x-ratelimit-remaining-tokens": str(1_000_000 - 40)}
    assert lease.raw_headers == [(b"x-ratelimit-remaining-tokens", b"999960")]
    await lease.settle(12)
    await lease.settle(30)
    assert bound.count == 0
    assert key_lease.settled == [12]


async def test_a_lease_without_a_bound_or_a_key_lease_settles_quietly() -> None:
    lease = RequestLease(None, None)
    await lease.settle(5)
    assert lease.headers == {} and lease.raw_headers == [] and lease.reserved == 0
