"""The aware router's decisions, with a fake metrics source (the scrapes dict) and a fake
clock: ties, stale scrapes, in-flight bursts, a dead replica, bounded-load spill, ring
changes, overload, and the reasons it counts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import UpstreamUnavailable
from gateway.metrics import GatewayMetrics
from gateway.routing.affinity import prefix_key
from gateway.routing.load import Scrape
from gateway.routing.ring import HashRing, bounded_pick, key_hash, load_bound
from gateway.routing.router import OVERLOADED_CODE, AwareRouter, Route
from gateway.settings import RouterSettings
from gateway.upstreams import UpstreamPool

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chat(system: str, user: str = "hello") -> dict[str, Any]:
    """A parsed chat body, as admission hands it to the router."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return {"model": "m", "messages": messages}


def tenant_prompt(index: int) -> str:
    return f"You are the assistant of tenant {index}. " * 20


class Fixture:
    def __init__(self, replicas: int = 3, **settings: object) -> None:
        self.pool = UpstreamPool([f"http://10.0.0.{i}:8000" for i in range(1, replicas + 1)])
        for upstream in self.pool.upstreams:
            self.pool.record(upstream, True, frozenset({"m"}))
        self.scrapes: dict[str, Scrape] = {}
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.router = AwareRouter(
            RouterSettings(**settings),  # type: ignore[arg-type]
            self.pool,
            self.scrapes,
            self.clock,
            self.metrics,
        )

    def label(self, index: int) -> str:
        return self.pool.upstreams[index].label

    def route(self, body: dict[str, Any] | None, attempts: int, path: str = CHAT) -> Route:
        """The route of a request, its key read from its parsed body as admission does."""
        key = None if body is None else self.router.request_key(path, body)
        return self.router.route(path, key, attempts)

    def first(self, body: dict[str, Any] | None, path: str = CHAT) -> str:
        return self.route(body, 3, path).candidates[0].label

    def scrape(self, index: int, running: float = 0, waiting: float = 0, kv: float = 0) -> None:
        upstream = self.pool.upstreams[index]
        self.scrapes[upstream.label] = Scrape(
            running, waiting, kv, at=self.clock.now, in_flight_at=upstream.in_flight
        )

    def decisions(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "vkit_gateway_routing_decisions_total", {"reason": reason}
        )
        return value or 0.0


def test_one_tenant_sticks_to_one_replica_and_tenants_spread() -> None:
    f = Fixture()
    owners = {i: f.first(chat(tenant_prompt(i), "turn 0")) for i in range(30)}
    for i in range(30):
        for turn in range(1, 4):  # later turns of the same conversation: same replica
            assert f.first(chat(tenant_prompt(i), f"turn {turn}")) == owners[i]
    shares = Counter(owners.values())
    assert len(shares) == 3  # 30 tenants over 3 replicas: every replica has some
    assert f.decisions("affinity") == 120
    assert f.decisions("load_spill") == 0


def test_equal_replicas_share_sequential_requests_without_a_key() -> None:
    f = Fixture()
    firsts = Counter(f.first(chat("short")) for _ in range(30))  # below min_prefix_chars
    assert sorted(firsts.values()) == [10, 10, 10]  # ties taken in turn, no hot spot
    assert f.decisions("least_loaded") == 30


def test_least_loaded_follows_the_scrape_and_the_kv_fill_breaks_ties() -> None:
    f = Fixture()
    f.scrape(0, running=5)
    f.scrape(1, running=1, kv=0.9)
    f.scrape(2, running=1, kv=0.1)
    assert {f.first(None, "/v1/embeddings") for _ in range(6)} == {f.label(2)}


def test_sends_since_the_scrape_count_until_the_next_one() -> None:
    f = Fixture(replicas=2)
    f.scrape(0)
    f.scrape(1, running=2)
    # A burst between scrapes: the gateway's own in-flight count sees it.
    f.pool.upstreams[0].in_flight = 3
    views = f.router.views(f.pool.upstreams)
    assert views[f.label(0)].load == 3
    assert views[f.label(1)].load == 2
    assert f.first(None, "/v1/embeddings") == f.label(1)


def test_a_stale_scrape_counts_for_nothing() -> None:
    f = Fixture(replicas=2, stale_after=3.0)
    f.scrape(0, running=50, waiting=10)
    f.scrape(1)
    assert f.first(None, "/v1/embeddings") == f.label(1)
    f.clock.now += 3.5  # both scrapes stale: in-flight counts (0 and 2) decide
    f.pool.upstreams[1].in_flight = 2
    views = f.router.views(f.pool.upstreams)
    assert not views[f.label(0)].fresh
    assert views[f.label(0)].load == 0
    assert f.first(None, "/v1/embeddings") == f.label(0)


def test_a_dead_replica_is_out_at_once_and_only_its_keys_move() -> None:
    f = Fixture()
    bodies = [chat(tenant_prompt(i)) for i in range(60)]
    before = [f.first(b) for b in bodies]
    dead = f.pool.upstreams[0]
    f.router.connect_failed(dead)  # refused a connection: out before any probe
    assert not dead.ready
    after = [f.first(b) for b in bodies]
    assert dead.label not in after
    for old, new in zip(before, after, strict=True):
        if old != dead.label:
            assert new == old  # keys of the living replicas stay put
    f.pool.record(dead, True, frozenset({"m"}))  # the prober finds it ready again
    # The moved keys stay where their caches are now; new keys fill the returned replica.
    assert [f.first(b) for b in bodies] == after
    newcomers = [f.first(chat(tenant_prompt(i))) for i in range(100, 130)]
    assert newcomers.count(dead.label) >= 20


def test_retries_go_to_a_different_replica() -> None:
    f = Fixture()
    for i in range(10):
        candidates = f.route(chat(tenant_prompt(i)), 3).candidates
        assert len({u.label for u in candidates}) == 3
    two = Fixture(replicas=2)
    candidates = two.route(chat(tenant_prompt(1)), 3).candidates
    assert candidates[0] is not candidates[1]
    assert candidates[2] is candidates[0]


def test_a_key_over_the_bound_spills_to_the_next_on_the_ring() -> None:
    f = Fixture(epsilon=0.25)
    body = chat(tenant_prompt(7))
    owner = f.first(body)
    index = [u.label for u in f.pool.upstreams].index(owner)
    f.pool.upstreams[index].in_flight = 9  # (9, 0, 0): bound max(ceil(1.25 x 10 / 3), 0 + 8) = 8
    spilled = f.route(body, 3)
    assert spilled.reason == "load_spill"
    assert spilled.candidates[0].label != owner
    assert f.decisions("load_spill") == 1
    f.pool.upstreams[index].in_flight = 7  # within the margin again: back to its replica
    assert f.first(body) == owner


def test_one_hot_key_never_puts_more_than_the_bound_on_a_replica() -> None:
    f = Fixture(epsilon=0.25)
    body = chat(tenant_prompt(3))
    for _ in range(90):  # every request of one tenant, none finishing
        f.route(body, 1).candidates[0].in_flight += 1
    loads = [u.in_flight for u in f.pool.upstreams]
    assert sum(loads) == 90
    assert max(loads) <= load_bound([30, 30, 30], 0.25)  # ceil(1.25 x 91 / 3) = 38


def test_ring_changes_move_only_the_share_of_the_replica_that_left_or_joined() -> None:
    keys = [key_hash(f"tenant-{i}") for i in range(2000)]
    four = HashRing(["a", "b", "c", "d"], 64)
    three = HashRing(["a", "b", "c"], 64)
    five = HashRing(["a", "b", "c", "d", "e"], 64)
    for key in keys:
        owner = four.walk(key)[0]
        if owner != "d":
            assert three.walk(key)[0] == owner
        joined = five.walk(key)[0]
        assert joined in (owner, "e")
    moved = sum(five.walk(k)[0] == "e" for k in keys) / len(keys)
    assert 0.1 < moved < 0.3  # about 1/5


def test_bounded_pick_keeps_the_owner_within_the_bound() -> None:
    loads = {"a": 0.0, "b": 0.0}
    assert bounded_pick(["a", "b"], loads.__getitem__, 0.25) == (0, ["a", "b"])
    loads["a"] = 2.0  # bound ceil(1.25 x 3 / 2) = 2: a full
    assert bounded_pick(["a", "b"], loads.__getitem__, 0.25) == (1, ["b", "a"])
    assert bounded_pick(["a", "b"], loads.__getitem__, 0.25, margin=3) == (0, ["a", "b"])
    loads.update(a=3.0, b=2.0)  # the margin counts from the least loaded replica, not zero
    assert bounded_pick(["a", "b"], loads.__getitem__, 0.0, margin=2) == (0, ["a", "b"])
    assert bounded_pick(["a", "b"], loads.__getitem__, 0.0, margin=1) == (1, ["b", "a"])


def key_of(body: dict[str, Any]) -> int:
    key = prefix_key(body, CHAT, prefix_chars=2048, min_prefix_chars=64)
    assert key is not None
    return key


def test_tenants_whose_keys_hash_to_one_replica_are_placed_evenly() -> None:
    f = Fixture(replicas=2)
    ring = HashRing([u.label for u in f.pool.upstreams], 64)
    owner = f.label(0)
    tenants = [i for i in range(400) if ring.walk(key_of(chat(tenant_prompt(i))))[0] == owner]
    tenants = tenants[:12]  # twelve tenants whose ring owner is the same replica
    placed = [f.first(chat(tenant_prompt(i), "turn 0")) for i in tenants]
    assert Counter(placed) == {owner: 6, f.label(1): 6}
    for i, home in zip(tenants, placed, strict=True):  # later turns follow the placement
        assert f.first(chat(tenant_prompt(i), "turn 1")) == home
    unplaced = Fixture(replicas=2, key_table_size=0)  # the ring owner alone: all on one
    assert {unplaced.first(chat(tenant_prompt(i))) for i in tenants} == {owner}


def test_an_idle_key_is_forgotten_and_the_table_stays_bounded() -> None:
    f = Fixture(replicas=2, key_table_size=10, key_idle_ttl=60.0)
    assert f.router.keys is not None
    for i in range(25):
        f.first(chat(tenant_prompt(i)))
    assert len(f.router.keys) == 10  # the least recently used went first
    assert sum(f.router.keys.counts().values()) == 10
    f.clock.now += 61
    assert f.router.keys.counts() == {}
    f.first(chat(tenant_prompt(1)))
    assert len(f.router.keys) == 1


def test_tenants_whose_keys_all_fall_on_one_replica_still_use_the_idle_one() -> None:
    f = Fixture(replicas=2)
    owner = f.pool.upstreams[0]
    tenants = [i for i in range(400) if f.first(chat(tenant_prompt(i))) == owner.label][:16]
    assert len(tenants) == 16  # sixteen tenants, every one's key on the same replica
    placed = []
    for i in range(16):  # sixteen requests at once (none finishes)
        upstream = f.route(chat(tenant_prompt(tenants[i])), 1).candidates[0]
        upstream.in_flight += 1
        placed.append(upstream.label)
    # Their own replica keeps them while that leaves it at most 8 (the margin) ahead of the
    # idle one; past that every other one spills: 12 and 4, never all sixteen on one.
    assert placed[:8] == [owner.label] * 8
    assert placed[8] != owner.label
    assert placed.count(owner.label) == 12


def test_a_few_requests_ahead_keeps_a_tenant_on_its_own_cache() -> None:
    f = Fixture(replicas=2)
    body = chat(tenant_prompt(5))
    owner = f.first(body)
    index = [u.label for u in f.pool.upstreams].index(owner)
    f.pool.upstreams[index].in_flight = 3  # (3, 0) at four in flight: within the margin of 8
    assert f.route(body, 1).reason == "affinity"
    f.pool.upstreams[index].in_flight = 8  # 8 ahead: this one would make it 9, over it
    assert f.route(body, 1).reason == "load_spill"


def test_every_queue_over_the_bound_is_a_503_with_retry_after() -> None:
    f = Fixture(replicas=2, max_waiting=4)
    f.scrape(0, running=8, waiting=5)
    f.scrape(1, running=8, waiting=9)
    with pytest.raises(UpstreamUnavailable) as refused:
        f.route(chat(tenant_prompt(1)), 3)
    assert refused.value.code == OVERLOADED_CODE
    assert refused.value.headers["retry-after"] == "1"
    assert f.registry.get_sample_value("vkit_gateway_routing_overloaded_total") == 1
    f.scrape(0, running=8, waiting=3)  # one has room: it takes the request, affinity or not
    for i in range(10):
        assert f.first(chat(tenant_prompt(i))) == f.label(0)
    f.clock.now += 10  # no fresh scrape: the gateway does not guess a queue, nothing refused
    f.route(chat(tenant_prompt(1)), 3)


def test_no_ready_replica_falls_back_to_the_list_order() -> None:
    f = Fixture(replicas=2)
    for upstream in f.pool.upstreams:
        f.pool.record(upstream, False, frozenset())
    route = f.route(chat(tenant_prompt(1)), 2)
    assert route.reason == "fallback"
    assert len(route.candidates) == 2


def test_the_router_routes_on_the_key_admission_read_and_parses_no_body() -> None:
    """Admission reads the key from the body it parsed (``request_key``) into the request's
    record; the router routes on that key alone: no second parse of the body."""
    f = Fixture()
    body = chat(tenant_prompt(4))
    key = f.router.request_key(CHAT, body)
    assert key == key_of(body)
    owner = f.router.route(CHAT, key, 3)
    assert owner.reason == "affinity"
    assert owner.candidates[0].label == f.first(body)
    assert f.router.route(CHAT, None, 3).reason == "least_loaded"
    assert f.router.request_key("/v1/embeddings", {"model": "m", "input": "x"}) is None
