"""Fixtures: a scripted upstream on a real socket and the gateway under a real uvicorn
server in the test's event loop (streams, timeouts and disconnects need real sockets)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from gateway.app import GatewayApp, create_admin_app, create_app
from gateway.held_head import http_protocol
from gateway.settings import GatewaySettings
from tests.gateway.doubles import DictKeyStore, Key, RecordingLimiter
from tests.gateway.ledger_stores import ledger_store, postgres_server, store_url  # noqa: F401
from tests.vllm_standin import ScriptedUpstream

SECRET = "sk-test-alice"

_HERE = Path(__file__).parent
# An unclosed socket or session is a leak a proxy must not have: in this directory it fails the
# test (the project's ini ignores ResourceWarning elsewhere). A ResourceWarning raised in a
# ``__del__`` reaches pytest as an unraisable exception, hence the second filter.
_LEAKS_FAIL = (
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """A test here first collects the garbage, outside its own filters: what an earlier
    test left in a reference cycle (a pipe a test elsewhere left open, where ResourceWarning
    is ignored; a socket of an earlier test's event loop, closed since) would otherwise be
    freed during this test and fail it for another's leak. A leak freed by reference
    counting, the common case, still fails the test that leaked. (Pytest calls this hook for
    every test.)"""
    if item.path.is_relative_to(_HERE):
        gc.collect()
    return (yield)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            for mark in _LEAKS_FAIL:
                item.add_marker(mark)


AUTH = {"Authorization": f"Bearer {SECRET}"}


@dataclass
class ServedGateway:
    app: GatewayApp
    url: str
    registry: CollectorRegistry
    limiter: RecordingLimiter
    client: httpx.AsyncClient
    admin: httpx.AsyncClient  # the admin listener's app (/metrics, detailed /readyz), in process

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as double:
        yield double


GatewayFactory = Callable[..., Awaitable[ServedGateway]]


@pytest.fixture
async def start_gateway(upstream: ScriptedUpstream) -> AsyncIterator[GatewayFactory]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[Any], httpx.AsyncClient]] = []
    admins: list[httpx.AsyncClient] = []

    async def start(
        *,
        upstreams: list[str] | None = None,
        keys: dict[str, Key] | None = None,
        limiter: Any = None,
        upstream_client: Any = None,
        prompt_counter: Any = None,
        ledger: Any = None,
        **overrides: Any,
    ) -> ServedGateway:
        fields: dict[str, Any] = {
            "upstreams": upstreams or [upstream.url],
            "port": 0,
            "health": {"interval": 0.2, "timeout": 1.0},
            "retry": {"attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.02},
        }
        settings = GatewaySettings(**(fields | overrides))
        registry = CollectorRegistry()
        limiter = limiter if limiter is not None else RecordingLimiter()
        store = DictKeyStore(keys if keys is not None else {SECRET: Key("alice")})
        app = create_app(
            settings,
            key_store=store,
            limiter=limiter,
            registry=registry,
            upstream_client=upstream_client,
            prompt_counter=prompt_counter,
            ledger=ledger,
        )
        # uvicorn as `vkit gateway` runs it: httptools, the response head held for its body
        http = http_protocol("httptools")
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", http=http)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        pool = app.running.pool
        await wait_until(lambda: all(u.probed for u in pool.upstreams))
        client = httpx.AsyncClient(base_url=url, timeout=10)
        servers.append((server, task, client))
        transport = httpx.ASGITransport(app=create_admin_app(app))
        admin = httpx.AsyncClient(transport=transport, base_url="http://admin", timeout=10)
        admins.append(admin)
        return ServedGateway(app, url, registry, limiter, client, admin)

    yield start
    for admin in admins:
        await admin.aclose()
    for server, task, client in servers:
        await client.aclose()
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def leave_after_two_chunks(gw: ServedGateway, path: str, body: dict[str, Any]) -> int:
    """Stream ``body`` to ``path``, hang up after two chunks, and return what the key was
    billed once the gateway settled (its upstream closed by then, its in-flight gauge 0)."""
    async with gw.client.stream("POST", path, json=body, headers=AUTH) as response:
        chunks = response.aiter_bytes()
        await anext(chunks)
        await anext(chunks)
    await wait_until(lambda: bool(gw.limiter.leases[0].settled))
    assert gw.metric("vkit_gateway_in_flight_requests") == 0
    return gw.limiter.leases[0].settled[0]
