"""What the aware router reads: a request's prefix key, vLLM's gauges, the replica list
from a file or DNS (with a fake resolver)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from gateway.metrics import GatewayMetrics
from gateway.routing.affinity import prefix_key
from gateway.routing.discovery import Discovery, DnsSource, FileSource, parse_url_list
from gateway.routing.load import Scrape, parse_vllm_gauges, view
from gateway.settings import GatewaySettings, load_settings
from gateway.upstreams import UpstreamPool

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
SYSTEM = "You answer questions about the tenant's invoices, politely. " * 4


def key(data: object, path: str = CHAT, **limits: int) -> int | None:
    options = {"prefix_chars": 2048, "min_prefix_chars": 64} | limits
    assert isinstance(data, dict)
    return prefix_key(data, path, **options)


def chat(*messages: tuple[str, str], model: str = "m") -> dict[str, object]:
    return {"model": model, "messages": [{"role": r, "content": c} for r, c in messages]}


def test_an_agent_bodys_instructions_are_its_key_as_a_chat_system_message() -> None:
    """``system`` (/v1/messages) and ``instructions`` (/v1/responses) lead as chat's system
    message does: an agent's requests meet on one replica, and so do a chat and an agent
    request that share the prompt vLLM renders first."""
    as_chat = key(chat(("system", SYSTEM), ("user", "first question")))
    blocks = [{"type": "text", "text": SYSTEM}]
    turns = [{"role": "user", "content": [{"type": "text", "text": "other"}]}]
    messages = key({"model": "m", "system": blocks, "messages": turns}, "/v1/messages")
    responses = key({"model": "m", "instructions": SYSTEM, "input": "hi"}, "/v1/responses")
    assert as_chat is not None and as_chat == messages == responses
    no_system = {"model": "m", "input": [{"type": "function_call", "arguments": "{}"}]}
    assert key(no_system, "/v1/responses") is None  # too little leading text for a key


def test_a_tenants_system_prompt_is_the_key_whatever_its_users_ask() -> None:
    one = key(chat(("system", SYSTEM), ("user", "first question")))
    two = key(chat(("system", SYSTEM), ("user", "another"), ("assistant", "x"), ("user", "y")))
    assert one is not None and one == two
    assert key(chat(("system", SYSTEM + "!"), ("user", "first question"))) != one
    assert key(chat(("system", SYSTEM), ("user", "q"), model="other")) != one


def test_without_a_system_prompt_a_conversation_keys_on_its_first_turns() -> None:
    first = "Please summarise the following report for me: " + "numbers " * 20
    turn1 = key(chat(("user", first)), prefix_chars=100)
    turn2 = key(chat(("user", first), ("assistant", "ok"), ("user", "more")), prefix_chars=100)
    assert turn1 is not None and turn1 == turn2  # the key covers the first 100 characters
    assert key(chat(("system", "Be brief."), ("user", "hi"))) is None  # nothing worth it


def test_completion_prompts_key_on_their_first_characters() -> None:
    body = {"model": "m", "prompt": SYSTEM + "question one"}
    same = {"model": "m", "prompt": SYSTEM + "question two"}
    assert key(body, COMPLETIONS, prefix_chars=200) == key(same, COMPLETIONS, prefix_chars=200)
    assert key(body, COMPLETIONS) != key(same, COMPLETIONS)  # differ within 2048 characters
    batch = {"model": "m", "prompt": [SYSTEM, "other"]}
    assert key(batch, COMPLETIONS) == key({"model": "m", "prompt": SYSTEM}, COMPLETIONS)
    assert key({"model": "m", "prompt": list(range(100))}, COMPLETIONS) is not None
    assert prefix_key({"input": "x"}, "/v1/embeddings", prefix_chars=10, min_prefix_chars=0) is None
    assert key({"model": "m", "messages": "not a list"}) is None


def test_media_parts_count_as_their_type() -> None:
    parts = [{"type": "text", "text": SYSTEM}, {"type": "image_url", "image_url": {"url": "u"}}]
    data = {"model": "m", "messages": [{"role": "system", "content": parts}]}
    assert key(data) == key(chat(("system", SYSTEM + "<image_url>")))


VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-llama"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny-llama"} 1.0
vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 50.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.25
vllm:prefix_cache_hits_total{engine="0",model_name="tiny-llama"} 4096.0
"""


def test_the_gauges_are_summed_over_engines_and_others_ignored() -> None:
    gauges = parse_vllm_gauges(VLLM_PAGE)
    assert gauges == {
        "vllm:num_requests_running": 4.0,
        "vllm:num_requests_waiting": 2.0,
        "vllm:kv_cache_usage_perc": 0.25,
    }
    assert parse_vllm_gauges("# nothing\nother_metric 1\n") is None


def test_a_view_adds_what_was_sent_since_the_scrape() -> None:
    scrape = Scrape(running=4, waiting=2, kv_usage=0.5, at=10.0, in_flight_at=1)
    fresh = view(scrape, in_flight=3, now=11.0, stale_after=3.0)
    assert (fresh.load, fresh.waiting, fresh.score) == (8.0, 4.0, 8.5)
    finished = view(scrape, in_flight=0, now=11.0, stale_after=3.0)  # its one request ended
    assert (finished.load, finished.waiting) == (5.0, 2.0)
    stale = view(scrape, in_flight=3, now=20.0, stale_after=3.0)
    assert (stale.load, stale.waiting, stale.fresh) == (3.0, None, False)


def test_the_url_file_keeps_order_and_skips_comments(tmp_path: Path) -> None:
    text = "# replicas\nhttp://a:1/\n\nhttp://b:2  # second\nhttp://a:1\n"
    assert parse_url_list(text) == ["http://a:1", "http://b:2"]


async def test_discovery_replaces_the_pool_and_keeps_known_replicas(tmp_path: Path) -> None:
    path = tmp_path / "replicas.txt"
    path.write_text("http://a:1\nhttp://b:2\n")
    pool = UpstreamPool(["http://a:1"])
    kept = pool.upstreams[0]
    pool.record(kept, True, frozenset({"m"}))
    kept.in_flight = 2
    discovery = Discovery(FileSource(path), pool, interval=1.0)
    assert await discovery.refresh()
    assert [u.url for u in pool.upstreams] == ["http://a:1", "http://b:2"]
    assert pool.upstreams[0] is kept and kept.ready and kept.in_flight == 2
    assert not pool.upstreams[1].probed  # new: probed before the aware router uses it
    assert not await discovery.refresh()  # unchanged
    path.unlink()
    assert not await discovery.refresh()  # unreadable: the list stays
    assert len(pool.upstreams) == 2


async def test_a_dropped_replica_loses_its_series_even_one_written_late(tmp_path: Path) -> None:
    path = tmp_path / "replicas.txt"
    path.write_text("http://a:1\nhttp://b:2\n")
    pool = UpstreamPool(["http://a:1", "http://b:2"])
    metrics = GatewayMetrics(CollectorRegistry())
    for upstream in pool.upstreams:
        metrics.upstream_up.labels(upstream.label).set(1)
        metrics.upstream_errors.labels(upstream.label, "connect").inc()
        metrics.canary_seconds.labels(upstream.label).observe(0.1)
    discovery = Discovery(FileSource(path), pool, interval=1.0, metrics=metrics)
    dropped = pool.upstreams[1]
    path.write_text("http://a:1\n")
    assert await discovery.refresh()
    assert dropped.removed and not pool.upstreams[0].removed
    up = metrics.registry.get_sample_value
    assert up("vkit_gateway_upstream_up", {"upstream": "b:2"}) is None
    assert up("vkit_gateway_canary_seconds_count", {"upstream": "b:2"}) is None
    assert up("vkit_gateway_upstream_up", {"upstream": "a:1"}) == 1
    labels = {"upstream": "a:1", "kind": "connect"}
    assert up("vkit_gateway_upstream_errors_total", labels) == 1
    metrics.upstream_errors.labels("b:2", "dropped").inc()  # a request that was on it ends
    assert not await discovery.refresh()
    labels = {"upstream": "b:2", "kind": "dropped"}
    assert up("vkit_gateway_upstream_errors_total", labels) is None


async def test_dns_records_become_replicas_and_no_records_none() -> None:
    answers: dict[str, list[str]] = {"vllm.ns.svc": ["10.0.0.2", "10.0.0.1", "10.0.0.2", "fd00::1"]}

    async def resolve(name: str, port: int) -> list[str]:
        return answers.get(name, [])

    source = DnsSource("vllm.ns.svc", 8000, resolve=resolve)
    assert await source.replicas() == [
        "http://10.0.0.1:8000",
        "http://10.0.0.2:8000",
        "http://[fd00::1]:8000",
    ]
    pool = UpstreamPool(["http://10.0.0.9:8000"])
    discovery = Discovery(source, pool, interval=1.0)
    await discovery.refresh()
    assert len(pool.upstreams) == 3
    answers.clear()  # scaled to zero
    await discovery.refresh()
    assert pool.upstreams == [] and pool.none_can_serve
    assert pool.candidates(3) == []


def test_routing_hold_and_discovery_come_from_the_environment() -> None:
    env = {
        "VKIT_GATEWAY_ROUTING": "aware",
        "VKIT_GATEWAY_ROUTER__EPSILON": "0.5",
        "VKIT_GATEWAY_HOLD__MAX_WAIT": "120",
        "VKIT_GATEWAY_DISCOVERY__DNS_NAME": "vllm-headless.vkit.svc",
    }
    settings = load_settings(None, env)
    assert settings.routing == "aware" and settings.router.epsilon == 0.5
    assert settings.hold.max_wait == 120
    assert settings.discovery.dns_name == "vllm-headless.vkit.svc"
    assert GatewaySettings().routing == "round_robin"
    assert GatewaySettings().hold.max_wait is None


def test_bad_routing_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="round_robin"):
        GatewaySettings(routing="random")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"below timeouts\.total"):
        GatewaySettings(hold={"max_wait": 600})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not both"):
        GatewaySettings(discovery={"file": "x", "dns_name": "y"})  # type: ignore[arg-type]
