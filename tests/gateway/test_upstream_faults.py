"""Upstreams that answer badly or drop the request: what is retried, and what is not.

The rule (gateway/upstream_call.py): a request is sent again, to the next upstream, only when
the first one cannot have started it -- the connection was never made, it answered 503,
or its answer was not HTTP at all. Once an upstream may have started a generation (the
connection closed or reset after the request went out, a 502, a timeout), it is not.
"""

from __future__ import annotations

import json

import pytest

from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.vllm_standin import DROP, RESET, RawAnswer, RawUpstream, ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}

MALFORMED_HEADS = {
    "bad status line": b"HTTP/1.1 abc\r\n\r\n",
    "not http": b"hello there\r\n\r\n",
    "bad content-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
    "two content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}",
}


@pytest.mark.parametrize("answer", MALFORMED_HEADS.values(), ids=MALFORMED_HEADS.keys())
async def test_a_malformed_response_head_is_retried_on_the_next_upstream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, answer: bytes
) -> None:
    async with RawUpstream() as raw:
        raw.answers["/v1/chat/completions"] = answer
        gw = await start_gateway(upstreams=[raw.url, upstream.url], health={"interval": 60})
        for _ in range(2):  # round-robin starts on each upstream once
            response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            assert response.status_code == 200, response.text
        assert len(raw.requests_to("/v1/chat/completions")) == 1
        assert len(upstream.bodies) == 2
        labels = {"upstream": raw.url.removeprefix("http://"), "kind": "protocol"}
        assert gw.metric("vkit_gateway_upstream_errors_total", labels) == 1


@pytest.mark.parametrize("answer", MALFORMED_HEADS.values(), ids=MALFORMED_HEADS.keys())
async def test_a_malformed_head_from_every_upstream_is_a_502_envelope(
    start_gateway: GatewayFactory, answer: bytes
) -> None:
    async with RawUpstream() as raw:
        raw.answers["/v1/chat/completions"] = answer
        gw = await start_gateway(upstreams=[raw.url])
        response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "upstream_error"
        assert len(raw.requests_to("/v1/chat/completions")) == 3  # retry.attempts
        assert gw.limiter.leases[0].settled == [0]


@pytest.mark.parametrize("answer", [DROP, RESET], ids=["closed", "reset"])
async def test_a_request_dropped_after_it_was_sent_is_not_sent_again(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, answer: RawAnswer
) -> None:
    """The first upstream read the whole request, then closed (or reset) the connection:
    it may be generating, so the request must not start a second generation elsewhere."""
    async with RawUpstream() as raw:
        raw.answers["/v1/chat/completions"] = answer
        gw = await start_gateway(upstreams=[raw.url, upstream.url], health={"interval": 60})
        pool = gw.app.running.pool
        await wait_until(lambda: all(u.ready for u in pool.upstreams))
        first = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert first.status_code == 502
        assert first.json()["error"]["type"] == "upstream_error"
        generations = len(raw.requests_to("/v1/chat/completions")) + len(upstream.bodies)
        assert generations == 1
        labels = {"upstream": raw.url.removeprefix("http://"), "kind": "dropped"}
        assert gw.metric("vkit_gateway_upstream_errors_total", labels) == 1
        # The next request starts on the other upstream and is served.
        second = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert second.status_code == 200
        assert len(upstream.bodies) == 1


def _event(i: int) -> bytes:
    chunk = {"id": "x", "choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
CUT_STREAMS = {
    # the connection closed cleanly in the middle of the third event
    "torn event": _SSE_HEAD + _event(0) + _event(1) + _event(2)[:20],
    # ... or between two events, before data: [DONE]
    "no [DONE]": _SSE_HEAD + _event(0) + _event(1),
}


@pytest.mark.parametrize("answer", CUT_STREAMS.values(), ids=CUT_STREAMS.keys())
async def test_a_stream_ended_cleanly_before_done_ends_with_an_error_event(
    start_gateway: GatewayFactory, answer: bytes
) -> None:
    """A clean end before ``data: [DONE]`` is a cut answer: the client gets an error event
    and ``[DONE]`` (as for a broken connection), never the torn half of an event."""
    async with RawUpstream() as raw:
        raw.answers["/v1/chat/completions"] = answer
        gw = await start_gateway(upstreams=[raw.url])
        response = await gw.client.post("/v1/chat/completions", json=STREAM, headers=AUTH)
        events = [e for e in response.text.split("\n\n") if e]
        assert [json.loads(e.removeprefix("data: ")) for e in events[:2]] == [
            json.loads(_event(i)[6:]) for i in range(2)
        ]
        assert len(events) == 4, events
        assert json.loads(events[2].removeprefix("data: "))["error"]["type"] == "upstream_error"
        assert events[3] == "data: [DONE]"
        labels = {"upstream": raw.url.removeprefix("http://"), "kind": "stream"}
        assert gw.metric("vkit_gateway_upstream_errors_total", labels) == 1
