"""The upstream call's backoff between attempts (the attempts themselves, on real sockets:
test_upstream_faults.py, test_unavailable.py)."""

from __future__ import annotations

from gateway.settings import RetrySettings
from gateway.upstream_call import backoff


def test_backoff_doubles_from_the_initial_wait_up_to_the_cap() -> None:
    retry = RetrySettings(attempts=5, backoff_initial=0.1, backoff_max=0.35)
    assert [backoff(retry, n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.35, 0.35]
