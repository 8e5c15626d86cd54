"""A cheap OpenAI-compatible load generator: raw asyncio, one keep-alive connection per worker.

Sends chat completions (streaming or not) at a fixed concurrency for a fixed time and
prints one JSON line: requests/s, p50/p99 latency, p50/p99 time to first token (first
SSE ``data:`` event for streams), status counts and errors.

    python bench/loadgen.py --url http://127.0.0.1:9000 --concurrency 16 --duration 5 \\
        [--stream] [--api-key SECRET] [--model bench] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """Raw samples from one run; :meth:`summary` turns them into the printed numbers."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    def summary(self) -> dict[str, object]:
        ok = self.statuses.get(200, 0)
        return {
            "requests": len(self.latencies),
            "ok": ok,
            "rps": round(ok / self.elapsed, 1) if self.elapsed else 0.0,
            "p50_ms": _ms(percentile(self.latencies, 50)),
            "p99_ms": _ms(percentile(self.latencies, 99)),
            "ttft_p50_ms": _ms(percentile(self.ttfts, 50)),
            "ttft_p99_ms": _ms(percentile(self.ttfts, 99)),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def percentile(samples: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def build_request(host: str, path: str, body: bytes, api_key: str | None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    ]
    if api_key:
        lines.append(f"authorization: Bearer {api_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader, started: float) -> tuple[int, float, bool]:
    """Read one response; returns (status, ttft seconds, keep-alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked, keep_alive = None, False, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            keep_alive = False
    ttft = 0.0
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if not ttft and b"data:" in data:
                ttft = time.perf_counter() - started
            if size == 0:
                break
    elif length is not None:
        data = await reader.readexactly(length)
        ttft = time.perf_counter() - started
    else:
        await reader.read()
        ttft, keep_alive = time.perf_counter() - started, False
    return status, ttft, keep_alive


async def worker(
    address: tuple[str, int],
    request: bytes,
    deadline: float,
    stream: bool,
    result: LoadResult,
    interval: float = 0.0,
    first_at: float = 0.0,
) -> None:
    """Send ``request`` again and again until ``deadline`` (``time.perf_counter``): back to
    back, or with ``interval`` > 0 one every ``interval`` s from ``first_at`` (paced: every
    slot before the deadline is sent, late ones at once, so a stall is not left unsampled)."""
    reader = writer = None
    next_at = first_at
    while next_at < deadline if interval else time.perf_counter() < deadline:
        if interval:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(*address)
            assert reader is not None
            writer.write(request)
            status, ttft, keep_alive = await read_response(reader, started)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            result.errors[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        result.latencies.append(time.perf_counter() - started)
        result.statuses[status] += 1
        if stream and status == 200:
            result.ttfts.append(ttft)
        if not keep_alive and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def run_load(
    url: str,
    concurrency: int,
    duration: float,
    stream: bool,
    api_key: str | None = None,
    model: str = "bench",
    max_tokens: int = 16,
) -> LoadResult:
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    payload: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say something short."}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    path = (parts.path.rstrip("/") or "") + "/v1/chat/completions"
    request = build_request(parts.netloc, path, json.dumps(payload).encode(), api_key)
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(worker(address, request, deadline, stream, result) for _ in range(concurrency))
    )
    result.elapsed = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9000")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--api-key")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--label", default="", help="copied into the JSON line")
    args = parser.parse_args()
    result = asyncio.run(
        run_load(
            args.url,
            args.concurrency,
            args.duration,
            args.stream,
            args.api_key,
            args.model,
            args.max_tokens,
        )
    )
    line = {"label": args.label, "concurrency": args.concurrency, "stream": args.stream}
    line.update(result.summary())
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
