"""The gateway's own CPU per request, without sockets: requests driven through its ASGI app.

The app is built as ``vkit gateway`` builds it (key store from a keys file, memory limiter,
metrics with the process collector, the garbage collector tuned), with one difference: its
upstream client answers in process with the stand-in's canned answers (``bench/upstream.py``: a
chat completion, or a 16-chunk stream with usage in the last event), each stream event handed
over as its own read, as vLLM sends tokens (``--events-per-read N``: N events a read).
``--vllm-events``: the 16-token stream as vLLM's OpenAI server writes it when the gateway asks
for ``include_usage`` and ``continuous_usage_stats`` (``vllm_events`` in ``bench/upstream.py``,
which the stand-in writes to the gateway too), in place of the stand-in's older one.

No server, no socket, no load generator: what is measured is the gateway's Python work per
request (admission, the exchange, the relay, billing, metrics), the part that
bench/run.py's figures hold beside uvicorn's and the kernel's, and far less noisy than they are
on a shared VM (CPU time of this process only).

    .venv/bin/python bench/inproc.py [--requests 20000] [--concurrency 1,16] [--stream]
                                     [--rounds 3] [--profile FILE] [--vllm-events]
                                     [--events-per-read N]

Prints CPU microseconds per request (median and min-max of the rounds). ``--profile`` writes
a cProfile of one extra round (``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from statistics import median

from prometheus_client import CollectorRegistry, ProcessCollector
from upstream import StandInUpstream, UpstreamConfig, vllm_events  # bench/upstream.py

from gateway.app import create_app
from gateway.assembly import build_key_store, build_limiter
from gateway.keyfile import add_key
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from vkit.commands.gateway import tune_gc

UPSTREAM = "http://upstream.invalid:8000"
PATH = "/v1/chat/completions"


class Canned:
    """An answer of the stand-in, as the raw client hands it over: head, then body parts."""

    __slots__ = ("_parts", "content_type", "status")

    def __init__(self, status: int, content_type: str, parts: list[bytes]) -> None:
        self.status = status
        self.content_type = content_type
        self._parts = parts

    async def read(self) -> bytes:
        return b"".join(self._parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            yield part

    def unread(self) -> bytes:
        return b""

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass


class CannedClient:
    """The gateway's upstream client seam, answered in process."""

    def __init__(self, vllm: bool = False, events_per_read: int = 1) -> None:
        stand_in = StandInUpstream(UpstreamConfig())
        whole = stand_in._completion(chat=True)
        self._whole = whole.split(b"\r\n\r\n", 1)[1]
        config = stand_in.config
        events = (
            vllm_events(config.model, config.chunks, config.prompt_tokens, int(time.time()))
            if vllm
            else stand_in._stream_events(chat=True, include_usage=True)
        )
        self._events = [
            b"".join(events[at : at + events_per_read])
            for at in range(0, len(events), events_per_read)
        ]
        self._models = stand_in._models.split(b"\r\n\r\n", 1)[1]

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> Canned:
        if url.endswith("/v1/models"):
            return Canned(200, "application/json", [self._models])
        if method == "GET":
            return Canned(200, "text/plain", [b""])
        if body and (b'"stream": true' in body or b'"stream":true' in body):
            return Canned(200, "text/event-stream", list(self._events))
        return Canned(200, "application/json", [self._whole])

    async def aclose(self) -> None:
        pass


def build(keys: Path, vllm: bool = False, events_per_read: int = 1) -> tuple[object, str]:
    secret = add_key(keys, "bench", rpm=1_000_000_000, tpm=10**15, concurrency=100_000)
    settings = GatewaySettings(upstreams=[UPSTREAM], keys_file=keys)
    registry = CollectorRegistry()
    ProcessCollector(namespace="vkit_gateway", registry=registry)
    metrics = GatewayMetrics(registry)
    limiter = build_limiter(settings, metrics, [])
    key_store = build_key_store(settings, metrics)
    client = CannedClient(vllm, events_per_read)
    app = create_app(
        settings,
        key_store=key_store,
        limiter=limiter,
        metrics=metrics,
        upstream_client=client,
        probe_client=client,
    )
    return app, secret


def scope_of(secret: str, body: bytes) -> dict[str, object]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 9000),
        "client": ("127.0.0.1", 40000),
        "headers": [
            (b"host", b"127.0.0.1:9000"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer " + secret.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "state": {},
    }


async def one(app: object, scope: dict[str, object], body: bytes, statuses: list[int]) -> None:
    sent = False
    gone = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, object]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone  # the disconnect watcher waits here until the exchange ends
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    await app(dict(scope), receive, send)  # type: ignore[operator]
    if not gone.done():
        gone.cancel()


async def drive(app: object, scope: dict[str, object], body: bytes, n: int, c: int) -> float:
    statuses: list[int] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            await one(app, scope, body, statuses)

    started = time.process_time()
    await asyncio.gather(*(worker(n // c) for _ in range(c)))
    spent = time.process_time() - started
    bad = [s for s in statuses if s != 200]
    if bad or len(statuses) != (n // c) * c:
        sys.exit(f"unexpected answers: {len(statuses)} answers, {len(bad)} not 200: {bad[:5]}")
    return spent * 1e6 / len(statuses)


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app, secret = build(Path(tmp) / "keys.yaml", args.vllm_events, args.events_per_read)
        tune_gc()  # as `vkit gateway` does before it serves
        async with app.running.lifespan():  # type: ignore[attr-defined]
            await app.running.prober.probe_all()  # type: ignore[attr-defined]
            for stream in args.stream:
                payload = (
                    b'{"model": "bench", "messages": [{"role": "user", "content": '
                    b'"Say something short."}], "max_tokens": 16, "stream": '
                    + (b"true" if stream else b"false")
                    + b"}"
                )
                scope = scope_of(secret, payload)
                await drive(app, scope, payload, 2000, 16)  # warm-up
                for c in args.concurrency:
                    got = [
                        await drive(app, scope, payload, args.requests, c)
                        for _ in range(args.rounds)
                    ]
                    print(
                        f"stream={str(stream).lower():5} c={c:<3} "
                        f"{median(got):7.1f} us/request ({min(got):.1f}-{max(got):.1f}), "
                        f"{args.rounds} rounds of {args.requests}",
                        flush=True,
                    )
                    if args.profile:
                        profiler = cProfile.Profile()
                        profiler.enable()
                        await drive(app, scope, payload, args.requests, c)
                        profiler.disable()
                        name = f"{args.profile}-{'stream' if stream else 'whole'}-c{c}"
                        profiler.dump_stats(name)
                        print(f"  profile: {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument(
        "--concurrency", type=lambda t: [int(c) for c in t.split(",")], default=[1, 16]
    )
    parser.add_argument(
        "--stream",
        type=lambda t: [s == "yes" for s in t.split(",")],
        default=[False, True],
        help="no, yes or no,yes (default)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", help="write cProfile stats to FILE-<kind>-c<N>")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's loop, not uvloop")
    parser.add_argument(
        "--vllm-events",
        action="store_true",
        help="stream vLLM's own chunks (per-chunk usage, compact JSON), not the stand-in's",
    )
    parser.add_argument(
        "--events-per-read", type=int, default=1, help="stream events handed over per read"
    )
    args = parser.parse_args()
    if args.asyncio:
        asyncio.run(main_async(args))
    else:
        import uvloop

        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
