"""Which upstreams serve a name, as the pool answers it: kept current as the names each
upstream lists change, and as upstreams come and go."""

from __future__ import annotations

from gateway.upstreams import UpstreamPool

A, B, C = "http://a:8000", "http://b:8000", "http://c:8000"


def urls(pool: UpstreamPool, model: str | None) -> list[str]:
    return [u.url for u in pool.serving(model)]


def test_what_serves_a_name_follows_what_the_upstreams_list() -> None:
    pool = UpstreamPool([A, B])
    a, b = pool.upstreams
    assert urls(pool, "m") == []
    pool.record(a, True, frozenset({"m"}))
    assert urls(pool, "m") == [A]
    pool.record(b, True, frozenset({"m", "lora"}))
    assert urls(pool, "m") == [A, B] and urls(pool, "lora") == [B]
    pool.record(a, True, frozenset({"other"}))
    assert urls(pool, "m") == [B] and urls(pool, "other") == [A]
    pool.record(b, False, frozenset())  # a verdict without names keeps what it served
    assert urls(pool, "m") == [B]
    assert urls(pool, None) == [A, B]


def test_what_serves_a_name_follows_the_upstreams_replaced() -> None:
    pool = UpstreamPool([A, B])
    for upstream in pool.upstreams:
        pool.record(upstream, True, frozenset({"m"}))
    assert urls(pool, "m") == [A, B]
    pool.replace([B, C])
    assert urls(pool, "m") == [B]
    pool.record(pool.upstreams[1], True, frozenset({"m"}))
    assert urls(pool, "m") == [B, C]
    pool.replace([C])
    assert urls(pool, "m") == [C]
    assert pool.cannot_serve("m") is False and pool.cannot_serve("nobody") is True


def test_names_no_upstream_serves_are_not_kept() -> None:
    pool = UpstreamPool([A])
    pool.record(pool.upstreams[0], True, frozenset({"m"}))
    for name in ("x", "y", "m"):
        pool.serving(name)
    assert set(pool._serving) == {"m"}
