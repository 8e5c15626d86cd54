"""What each upstream serves, read from its model list, and the choices narrowed to one
model's upstreams: the pool's candidates and verdicts, the aware router's groups. Pure."""

from __future__ import annotations

from collections import Counter

from gateway.routing.load import Scrape
from gateway.routing.router import AwareRouter
from gateway.served_models import ServedModels, listing, read_served
from gateway.settings import RouterSettings
from gateway.upstreams import UpstreamPool

VLLM_LIST = (
    b'{"object": "list", "data": ['
    b'{"id": "llama", "object": "model", "root": "/models/llama", "parent": null},'
    b'{"id": "support", "object": "model", "root": "/adapters/support", "parent": "llama"},'
    b'{"object": "model"}]}'
)


def test_a_vllm_list_gives_its_names_and_the_adapters_parents() -> None:
    served = read_served(VLLM_LIST)
    assert served is not None
    assert served.names == {"llama", "support"}  # the card without an id is skipped
    assert served.bases == {"llama"}
    for body in (None, b"not json", b"[]", b'{"data": {}}'):
        assert read_served(body) is None


def test_the_listing_holds_each_name_once_and_only_the_granted_ones() -> None:
    first = read_served(VLLM_LIST)
    second = read_served(b'{"data": [{"id": "llama", "root": "elsewhere"}, {"id": "embed"}]}')
    assert first is not None and second is not None
    whole = listing([first, second])
    assert [c["id"] for c in whole["data"]] == ["llama", "support", "embed"]
    assert whole["data"][0]["root"] == "/models/llama"  # the first upstream's card
    granted = listing([first, second], allowed=["support", "embed"])
    assert [c["id"] for c in granted["data"]] == ["support", "embed"]


def two_groups() -> UpstreamPool:
    """Two replicas of ``a`` (the first holding adapter ``a-lora``), two of ``b``."""
    pool = UpstreamPool([f"http://10.0.0.{i}:8000" for i in range(1, 5)])
    for upstream, names in zip(pool.upstreams, ["a a-lora", "a", "b", "b"], strict=True):
        pool.record(upstream, True, frozenset(names.split()))
    return pool


def test_each_model_takes_its_own_turns_among_its_own_upstreams() -> None:
    pool = two_groups()
    firsts = [pool.candidates(2, model)[0].label for model in ["a", "b"] * 4]
    assert Counter(firsts[::2]) == {"10.0.0.1:8000": 2, "10.0.0.2:8000": 2}
    assert Counter(firsts[1::2]) == {"10.0.0.3:8000": 2, "10.0.0.4:8000": 2}
    assert {u.label for u in pool.candidates(3, "a-lora")} == {"10.0.0.1:8000"}
    assert pool.candidates(2, "nobody") == []
    assert len({u.label for u in pool.candidates(4)}) == 4  # no model: every upstream


def test_what_an_upstream_served_is_kept_while_it_is_down() -> None:
    pool = two_groups()
    b1, b2 = pool.upstreams[2:]
    pool.record(b1, False, frozenset())
    assert not pool.cannot_serve("b")
    pool.record(b2, False, frozenset())  # no answer: nothing listed
    assert pool.cannot_serve("b") and not pool.cannot_serve("a")
    assert "b" in pool.known_models()  # a 503 for it, not a 404
    pool.record(
        b1, True, frozenset({"b-new"}), ServedModels(({"id": "b-new"},), frozenset({"b-new"}))
    )
    assert pool.known_models() == {"a", "a-lora", "b", "b-new"}  # b2 still served b
    assert b1.served.names == {"b-new"}
    pool.replace([u.url for u in pool.upstreams[:2]])
    assert pool.known_models() == {"a", "a-lora"}  # b's replicas left the pool


def test_the_aware_router_balances_each_model_within_its_group() -> None:
    pool = two_groups()
    scrapes: dict[str, Scrape] = {}
    router = AwareRouter(RouterSettings(), pool, scrapes, lambda: 0.0)
    seen: Counter[str] = Counter()
    for model in ["a", "b"] * 6:
        route = router.route("/v1/chat/completions", None, 2, model=model)
        assert all(model in u.models for u in route.candidates)
        seen[route.candidates[0].label] += 1
    assert set(seen.values()) == {3}  # each replica took half of its model's requests
    key = router.request_key("/v1/completions", {"model": "a-lora", "prompt": "x" * 100})
    route = router.route("/v1/completions", key, 3, model="a-lora")
    assert {u.label for u in route.candidates} == {"10.0.0.1:8000"}
    assert route.reason == "affinity"
