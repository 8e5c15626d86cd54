"""A real NGINX from the rendered template in front of two stand-in replicas.

Shows what the deploy relies on: round-robin, SSE chunks passed on unbuffered, failover
to the live replica for what no replica can have started (a dead port; a GET answered
503), and no second replica for a POST the first may have started (it dropped the
connection after reading it; it answered 503, which the gateway retries instead). With
the gateway in front, a request reaches at most one replica that may generate it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.deploy.nginx_process import running_nginx
from tests.vllm_standin import (
    DROP,
    InThread,
    RawUpstream,
    Script,
    ScriptedUpstream,
    http_answer,
    standin_in_thread,
)
from vkit.nginx_conf import ProxyTuning

pytestmark = pytest.mark.integration

COMPLETION = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 4}


@pytest.fixture
def running() -> Iterator[list[InThread[ScriptedUpstream]]]:
    """Two stand-in replicas, "a" and "b", each naming itself in its answers."""
    with ExitStack() as stack:
        pair = [standin_in_thread(Script(name=name)) for name in ("a", "b")]
        for replica in pair:
            stack.enter_context(replica)
        yield pair


@pytest.fixture
def replicas(running: list[InThread[ScriptedUpstream]]) -> list[ScriptedUpstream]:
    return [replica.server for replica in running]


@pytest.fixture
def proxy(tmp_path: Path, replicas: list[ScriptedUpstream]) -> Iterator[str]:
    # A long fail_timeout so a replica marked failed stays out for the whole test.
    tuning = ProxyTuning(fail_timeout_s=30)
    with running_nginx(tmp_path / "nginx", [r.address for r in replicas], tuning) as url:
        yield url


def post_names(base_url: str, count: int) -> list[str]:
    names = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for _ in range(count):
            response = client.post("/v1/completions", json=COMPLETION)
            assert response.status_code == 200, response.text
            names.append(response.json()["replica"])
    return names


def test_requests_alternate_between_replicas(proxy: str) -> None:
    names = post_names(proxy, 6)
    assert names.count("a") == 3
    assert names.count("b") == 3
    assert all(x != y for x, y in itertools.pairwise(names))


def test_stream_chunks_arrive_before_the_replica_sends_the_rest(
    proxy: str, replicas: list[ScriptedUpstream]
) -> None:
    for replica in replicas:  # each holds its second chunk until the test resumes it
        replica.script.chunks, replica.script.stall_after = 2, 1
    seen: list[str] = []
    with (
        httpx.Client(base_url=proxy, timeout=10) as client,
        client.stream("POST", "/v1/completions", json=COMPLETION | {"stream": True}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                continue
            seen.append(line)
            # Resumed only once the first chunk has been seen here.
            for replica in replicas:
                replica.resume.set()
    contents = [
        json.loads(line.removeprefix("data: "))["choices"][0]["delta"] for line in seen[:-1]
    ]
    assert contents == [{"content": "t0 "}, {"content": "t1 "}]
    assert seen[-1] == "data: [DONE]"


def test_a_dead_replica_is_skipped(proxy: str, running: list[InThread[ScriptedUpstream]]) -> None:
    running[1].stop()
    assert post_names(proxy, 6) == ["a"] * 6


def test_a_get_answered_503_is_retried_on_the_other_replica(
    proxy: str, replicas: list[ScriptedUpstream]
) -> None:
    replicas[0].script.down_status = 503
    with httpx.Client(base_url=proxy, timeout=10) as client:
        names = [client.get("/v1/models").json()["replica"] for _ in range(6)]
    assert names == ["b"] * 6
    # The failing replica saw one request, then sat out its fail_timeout.
    assert replicas[0].hits == 1


def test_a_post_answered_503_is_passed_back_not_resent(
    proxy: str, replicas: list[ScriptedUpstream]
) -> None:
    """No ``non_idempotent``: NGINX sends a POST to one replica; the 503 goes back to the
    gateway, whose own retry is the only one (so the two layers never multiply)."""
    replicas[0].script.down_status = 503
    with httpx.Client(base_url=proxy, timeout=10) as client:
        statuses = [client.post("/v1/completions", json=COMPLETION).status_code for _ in range(4)]
    assert sorted(statuses) == [200, 200, 503, 503]
    assert replicas[0].hits == 2 and replicas[1].hits == 2


def dropping_replica() -> InThread[RawUpstream]:
    """A replica that reads each POST whole, then closes the connection without a word:
    one that dies after taking a POST looks so, and it may have begun generating. Its
    probes get an empty 200."""
    ok = http_answer(200)
    return InThread(RawUpstream({"/health": ok, "/v1/models": ok, "/v1/completions": DROP}))


def posts(replica: RawUpstream) -> int:
    return len(replica.requests_to("/v1/completions"))


@pytest.fixture
def dropping_proxy(tmp_path: Path) -> Iterator[tuple[str, RawUpstream, ScriptedUpstream]]:
    with standin_in_thread(Script(name="b")) as live, dropping_replica() as dropping:
        addresses = [dropping.url.removeprefix("http://"), live.address]
        tuning = ProxyTuning(fail_timeout_s=30)
        with running_nginx(tmp_path / "nginx", addresses, tuning) as url:
            yield url, dropping, live


def test_a_post_dropped_after_it_was_read_is_not_sent_to_another_replica(
    dropping_proxy: tuple[str, RawUpstream, ScriptedUpstream],
) -> None:
    proxy, dropping, live = dropping_proxy
    with httpx.Client(base_url=proxy, timeout=10) as client:
        answers = [client.post("/v1/completions", json=COMPLETION) for _ in range(4)]
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 502]
    dropped = next(a for a in answers if a.status_code == 502)
    assert dropped.json()["error"]["code"] == 502
    # Four requests, four replicas that may have generated them: none went to two.
    assert posts(dropping) == 1
    assert live.hits == 3


@asynccontextmanager
async def gateway_in_front(nginx_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway (anonymous calls, no probing after the first) with NGINX as upstream."""
    fields: dict[str, Any] = {
        "upstreams": [nginx_url],
        "allow_anonymous": True,
        "health": {"interval": 600},
        "retry": {"attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.02},
    }
    settings = GatewaySettings(**fields)
    app = create_app(settings, key_store=None, limiter=None, registry=CollectorRegistry())
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
            while not app.running.pool.upstreams[0].probed:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


async def test_through_gateway_and_nginx_a_dropped_post_runs_on_one_replica(
    dropping_proxy: tuple[str, RawUpstream, ScriptedUpstream],
) -> None:
    """Gateway retries x NGINX tries: a request the first replica took and dropped is
    not sent anywhere else, by either layer."""
    proxy, dropping, live = dropping_proxy
    async with gateway_in_front(proxy) as gateway:
        live.hits = 0  # the gateway's first probe went through NGINX
        statuses = []
        for _ in range(4):
            response = await gateway.post("/v1/completions", json=COMPLETION)
            statuses.append(response.status_code)
    assert sorted(statuses) == [200, 200, 200, 502]
    assert posts(dropping) + live.hits == 4  # one replica per request
    assert posts(dropping) == 1


async def test_through_gateway_and_nginx_a_503_is_retried_once(
    proxy: str, replicas: list[ScriptedUpstream]
) -> None:
    """The replica that answered 503 did not start it: the gateway (not NGINX) sends it
    again, and NGINX's round-robin takes it to the other replica."""
    async with gateway_in_front(proxy) as gateway:
        for replica in replicas:
            replica.hits = 0
        replicas[0].script.down_status = 503
        for _ in range(4):
            response = await gateway.post("/v1/completions", json=COMPLETION)
            assert response.status_code == 200, response.text
            assert response.json()["replica"] == "b"
    assert replicas[1].hits == 4  # one generation per request
    assert replicas[0].hits <= 4  # each refusal at most once per request


def test_no_live_replica_gives_the_openai_error_envelope(
    proxy: str, running: list[InThread[ScriptedUpstream]]
) -> None:
    for replica in running:
        replica.stop()
    response = httpx.post(f"{proxy}/v1/completions", json=COMPLETION, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == 502


def test_a_body_over_the_limit_is_refused_by_nginx(
    proxy: str, replicas: list[ScriptedUpstream]
) -> None:
    response = httpx.post(f"{proxy}/v1/completions", content=b"x" * (5 << 20), timeout=10)
    assert response.status_code == 413
    assert replicas[0].hits + replicas[1].hits == 0
