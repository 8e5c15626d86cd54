"""The exchange's one timer (gateway.relay.WriteWatch): the client-write deadline, the upstream
waits' deadline and the start of a whole answer's disconnect watch under a single timer, and
the proxied routes' status noted without a wrapper around ``send``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.accounting import RequestAccounting, answer_labels
from gateway.metrics import GatewayMetrics
from gateway.relay import WriteWatch
from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
PATH = "/v1/chat/completions"
EXCHANGE_TIMERS = ("WriteWatch.", "WaitDeadline.", "Exchange.")


def owner() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None
    return task


async def bounded(watch: WriteWatch, seconds: float, wait: float) -> str:
    """``asyncio.sleep(wait)`` as an upstream wait under ``seconds``: "done" or "timeout"."""
    watch.begin(seconds)
    try:
        await asyncio.sleep(wait)
    except asyncio.CancelledError:
        if not watch.timed_out():
            raise
        return "timeout"
    finally:
        watch.end()
    return "done"


async def stalled_write(watch: WriteWatch) -> str:
    """A write the client never takes: how it ends."""
    watch.since = watch.loop.time()
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        owner().uncancel()
        return watch.gave_up
    finally:
        watch.since = None
    return "taken"


async def test_one_timer_serves_the_waits_the_watch_start_and_the_writes() -> None:
    started: list[float] = []
    began = time.monotonic()
    watch = WriteWatch(owner(), 0.3, watch_after=0.05, then_watch=lambda: started.append(1))
    assert await bounded(watch, 0.1, 5) == "timeout"  # the wait's own deadline
    assert 0.08 <= time.monotonic() - began < 0.5
    assert started == [1]  # the watch started once, on the way
    assert await bounded(watch, 0.2, 0.01) == "done"
    write_began = time.monotonic()
    assert await stalled_write(watch) == "client_write"  # the timer still watches writes
    assert 0.25 <= time.monotonic() - write_began < 1
    assert owner().cancelling() == 0
    watch.close()
    assert started == [1]


async def test_a_write_waiting_at_the_total_deadline_gets_the_grace_then_total() -> None:
    watch = WriteWatch(owner(), 5, total_left=0.05)
    began = time.monotonic()
    assert await stalled_write(watch) == "total"
    assert 0.9 <= time.monotonic() - began < 2  # WRITE_GRACE_S from the write's start
    watch.close()


async def test_close_drops_the_watch_start_and_the_timer() -> None:
    started: list[float] = []
    watch = WriteWatch(owner(), 0.05, watch_after=0.02, then_watch=lambda: started.append(1))
    watch.close()
    await asyncio.sleep(0.15)
    assert started == []
    assert watch.gave_up == ""
    assert not watch.tripped


async def test_an_exchange_arms_one_timer(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole answer and a stream each arm one timer for the exchange, not one for writes,
    one for the upstream waits and one to start the disconnect watch."""
    gw = await start_gateway()
    loop = asyncio.get_running_loop()
    armed: list[str] = []
    call_at = loop.call_at

    def counting_call_at(
        when: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> Any:
        name = getattr(callback, "__qualname__", "")
        if name.startswith(EXCHANGE_TIMERS):
            armed.append(name)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    assert (await gw.client.post(PATH, json=CHAT, headers=AUTH)).status_code == 200
    assert armed == ["WriteWatch._fire"]
    armed.clear()
    upstream.script.chunks = 8
    response = await gw.client.post(PATH, json=STREAM, headers=AUTH)
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    assert armed == ["WriteWatch._fire"]


async def test_a_proxied_route_is_handed_the_servers_send_and_counts_its_answers(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    accounting = gw.app.proxied[PATH]
    assert isinstance(accounting, RequestAccounting)
    handed: list[tuple[object, object]] = []
    endpoint = accounting.app

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        handed[-1] = (handed[-1][0], send)
        await endpoint(scope, receive, send)

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        handed.append((send, None))
        await accounting(scope, receive, send)

    accounting.app = inner
    gw.app.proxied = MappingProxyType({**gw.app.proxied, PATH: outer})
    upstream.script.chunks = 8
    response = await gw.client.post(PATH, json=STREAM, headers=AUTH)
    assert response.status_code == 200
    assert (await gw.client.post(PATH, json=CHAT, headers=AUTH)).status_code == 200
    assert (await gw.client.post(PATH, content=b"{not json", headers=AUTH)).status_code == 400
    assert len(handed) == 3
    assert all(server is passed for server, passed in handed)  # no wrapper in between
    ok = {"key": "alice", "model": "tiny-llama", "status": "200"}
    bad = {"key": "alice", "model": "none", "status": "400"}
    await wait_until(lambda: gw.metric("vkit_gateway_requests_total", bad) == 1)
    assert gw.metric("vkit_gateway_requests_total", ok) == 2


async def test_an_app_that_notes_its_status_is_counted_by_it_or_as_a_500() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    server_sends: list[object] = []

    async def server_send(message: Any) -> None:
        server_sends.append(message)

    async def noting(scope: Any, receive: Any, send: Any) -> None:
        assert send is server_send
        answer_labels(scope).status = 201
        await send({"type": "http.response.start", "status": 201, "headers": []})

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 202, "headers": []})

    for app in (noting, silent):
        accounting = RequestAccounting(
            app, metrics=metrics, clock=time.perf_counter, app_notes_status=True
        )
        scope = {"type": "http", "path": PATH}
        await accounting(scope, None, server_send)  # type: ignore[arg-type]
    counted = metrics.registry.get_sample_value
    labels = {"key": "unauthenticated", "model": "none"}
    assert counted("vkit_gateway_requests_total", {**labels, "status": "201"}) == 1
    assert counted("vkit_gateway_requests_total", {**labels, "status": "500"}) == 1
    assert len(server_sends) == 2
