"""The scripted upstream and the gateway on their own event loop in a thread, for
synchronous clients (schemathesis calls the API with ``requests``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.gateway.doubles import DictKeyStore, Key, RecordingLimiter
from tests.vllm_standin import ScriptedUpstream


@contextmanager
def threaded_gateway(secret: str) -> Iterator[tuple[str, FastAPI]]:
    """Yield (base URL, app) of a gateway in front of a scripted upstream."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    tasks: list[asyncio.Task[None]] = []

    async def start() -> tuple[ScriptedUpstream, uvicorn.Server, FastAPI, str]:
        upstream = await ScriptedUpstream().start()
        settings = GatewaySettings(upstreams=[upstream.url], port=0)  # type: ignore[list-item]
        app = create_app(
            settings,
            key_store=DictKeyStore({secret: Key("fuzz")}),
            limiter=RecordingLimiter(),
            registry=CollectorRegistry(),
        )
        server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning"))
        tasks.append(loop.create_task(server.serve()))
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        return upstream, server, app, f"http://127.0.0.1:{port}"

    upstream, server, app, url = asyncio.run_coroutine_threadsafe(start(), loop).result(15)
    try:
        yield url, app
    finally:

        async def stop() -> None:
            server.should_exit = True
            async with asyncio.timeout(10):
                await tasks[0]
            await upstream.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
