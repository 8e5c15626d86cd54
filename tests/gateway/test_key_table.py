"""The routing key table's shares: one tenant's one-off prefixes turn over its own entries."""

from __future__ import annotations

from gateway.routing.key_table import KeyTable

WALK = ["r1", "r2"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_off_prefixes_of_one_tenant_evict_only_its_own_entries() -> None:
    table = KeyTable(capacity=12, idle_ttl=600.0, clock=FakeClock())
    homes = {key: table.place(key, WALK, "a") for key in range(4)}
    homes |= {key: table.place(key, WALK, "b") for key in (10, 11)}
    for key in range(1000, 1100):  # a prefix never seen again, each time
        table.place(key, WALK, "spammer")
    assert len(table) == 12
    assert table.tenant_counts() == {"a": 4, "b": 2, "spammer": 6}
    assert all(key in table for key in homes)
    assert all(table.place(key, WALK[::-1], "a") == home for key, home in homes.items())
    assert sum(table.counts().values()) == 12


def test_a_tenant_below_its_share_takes_from_the_one_holding_most() -> None:
    table = KeyTable(capacity=6, idle_ttl=600.0, clock=FakeClock())
    for key in range(100, 106):
        table.place(key, WALK, "spammer")  # first there: the whole table
    for key in range(5):
        table.place(key, WALK, "a")
    # a took entries until it held its share (6 / 2 tenants), then turned over its own.
    assert table.tenant_counts() == {"spammer": 3, "a": 3}
    assert [key in table for key in range(5)] == [False, False, True, True, True]
    assert [key in table for key in range(100, 106)] == [False] * 3 + [True] * 3


def test_an_entry_belongs_to_the_tenant_that_used_it_last_and_idle_ones_go() -> None:
    clock = FakeClock()
    table = KeyTable(capacity=4, idle_ttl=60.0, clock=clock)
    shared = table.place(7, WALK, "a")
    assert table.place(7, WALK, "b") == shared  # a prefix two tenants share: one entry
    assert table.tenant_counts() == {"b": 1}
    clock.now += 61
    assert table.tenant_counts() == {} and table.counts() == {} and len(table) == 0
