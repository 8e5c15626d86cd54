"""Measure upstream HTTP clients for the gateway: CPU time per request at concurrency 16.

Candidates (issue 6): httpx 0.28 (baseline), httpx behind an aiohttp transport
(``httpx-aiohttp``, skipped when not installed), the httpx2 fork, and aiohttp directly; and
the gateway's own two behind its client seam (issue 26): ``seam:aiohttp``
(``gateway.client.AiohttpClient``, what https:// upstreams get) and ``seam:raw``
(``gateway.raw_client.RawClient``, what http:// upstreams get).
The stand-in upstream (``bench/upstream.py``) runs pinned to CPU 0 in a subprocess; the
client runs pinned to CPU 1, so the number is the client's own CPU per request.

    python bench/clients.py [--requests 3000] [--concurrency 16] [--chunks 16]
                            [--only seam:raw,seam:aiohttp] [--rounds 1] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from vkit.stack.ports import free_port

BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM_BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()
HEADERS = {"content-type": "application/json"}

Fetch = Callable[[bytes], Awaitable[int]]


@contextlib.asynccontextmanager
async def aiohttp_client(url: str) -> AsyncIterator[Fetch]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=1024)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def fetch(body: bytes) -> int:
            async with session.post(url, data=body, headers=HEADERS) as response:
                size = 0
                while chunk := await response.content.readany():
                    size += len(chunk)
                return size

        yield fetch


def _seam(make: Callable[[], Any]) -> Callable[[str], Any]:
    @contextlib.asynccontextmanager
    async def factory(url: str) -> AsyncIterator[Fetch]:
        client = make()

        async def fetch(body: bytes) -> int:
            response = await client.send("POST", url, HEADERS, body)
            size = 0
            async for chunk in response.chunks():
                size += len(chunk)
            response.release()
            return size

        try:
            yield fetch
        finally:
            await client.aclose()

    return factory


def _httpx_like(module: Any, transport: Any = None) -> Callable[[str], Any]:
    @contextlib.asynccontextmanager
    async def factory(url: str) -> AsyncIterator[Fetch]:
        limits = module.Limits(max_connections=1024, max_keepalive_connections=1024)
        kwargs: dict[str, Any] = {"timeout": 30}
        if transport is not None:
            kwargs["transport"] = transport()
        else:
            kwargs["limits"] = limits
        async with module.AsyncClient(**kwargs) as client:

            async def fetch(body: bytes) -> int:
                request = client.build_request("POST", url, content=body, headers=HEADERS)
                response = await client.send(request, stream=True)
                size = 0
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                await response.aclose()
                return size

            yield fetch

    return factory


def candidates() -> dict[str, Callable[[str], Any]]:
    from gateway.client import AiohttpClient
    from gateway.raw_client import RawClient

    found: dict[str, Callable[[str], Any]] = {"aiohttp": aiohttp_client}
    found["seam:aiohttp"] = _seam(lambda: AiohttpClient(5.0))
    found["seam:raw"] = _seam(lambda: RawClient(5.0))
    import httpx

    found["httpx"] = _httpx_like(httpx)
    try:
        import httpx2

        found["httpx2"] = _httpx_like(httpx2)
    except ImportError:
        pass
    try:
        from httpx_aiohttp import AiohttpTransport

        found["httpx+aiohttp-transport"] = _httpx_like(httpx, AiohttpTransport)
    except ImportError:
        pass
    return found


async def measure(factory: Any, url: str, body: bytes, total: int, concurrency: int) -> float:
    async with factory(url) as fetch:
        for _ in range(concurrency):  # warm the pool
            await fetch(body)
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                await fetch(body)

        began = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.process_time() - began) / total * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--only", default="", help="comma-separated candidate names")
    parser.add_argument("--rounds", type=int, default=1, help="candidates alternated")
    parser.add_argument("--uvloop", action="store_true", help="the loop the gateway runs on")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    chosen = {
        name: factory
        for name, factory in candidates().items()
        if not args.only or name in args.only.split(",")
    }
    port = free_port()
    upstream_script = Path(__file__).with_name("upstream.py")
    command = [sys.executable, str(upstream_script), "--port", str(port)]
    command += ["--chunks", str(args.chunks)]
    if len(os.sched_getaffinity(0)) > 1:
        command = ["taskset", "-c", "0", *command]
        os.sched_setaffinity(0, {1})
    upstream = subprocess.Popen(command)
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(f"CPU ms per request, concurrency {args.concurrency}, {args.requests} requests")
        print(f"{'client':28} {'non-stream':>10} {'stream':>10}")
        for name, factory in [item for _ in range(args.rounds) for item in chosen.items()]:
            plain = asyncio.run(measure(factory, url, BODY, args.requests, args.concurrency))
            stream = asyncio.run(
                measure(factory, url, STREAM_BODY, args.requests, args.concurrency)
            )
            print(f"{name:28} {plain:10.3f} {stream:10.3f}")
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
