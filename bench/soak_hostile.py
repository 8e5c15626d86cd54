"""Normal keys' latency beside one hostile key: the gateway's fairness under abuse.

On loopback only: the stand-in upstream (``bench/upstream.py``), the normal load and the
hostile sender run on CPU 0, one ``vkit gateway`` process (keys file, limits in memory) on
CPU 1. Three normal keys send short chat completions at a steady pace (``--rate`` requests
per second in all, each answer's latency recorded); in the hostile phases a fourth key
(``hostile``, its own process) keeps ``--hostile-connections`` connections busy with:

    tools        a chat body whose ``tools`` is ~1.3 million empty lists (just under 4 MiB)
    big          a 4 MiB chat body (one long message)
    n1000        ``n``: 1000 and ``best_of``: 1000
    prompts      a completion of 2,000 prompts with ``n``: 8
    slow-body    a small body sent one byte every 50 ms
    unread       a stream the client stops reading (held 3 s, then closed)

The hostile key has ``rpm`` 10 and no token limit: most of its requests are refused (429)
once its minute is spent, and what the gateway does before refusing them is what the
normal keys feel. The phases run quiet, hostile, hostile, quiet (``--phase`` seconds each;
these shared machines drift, so each mode is measured early and late; a hostile phase
ends when the sender's last requests have). Prints each phase as it ends (stderr), then one
JSON line: per phase and per mode the normal keys' p50/p99 latency and status counts, the
hostile sender's counts by kind and status, and ``p99_ratio`` (hostile over quiet); exit
status 1 when that ratio is over 2. About 90 s with the defaults.

    .venv/bin/python bench/soak_hostile.py [--phase 15] [--rate 100] [--hostile-connections 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from loadgen import LoadResult, build_request, percentile, read_response, worker
from run import MODEL
from soak import stand_in_and_gateway

from gateway.keyfile import add_key

NORMAL_KEYS = ("tenant-a", "tenant-b", "tenant-c")
BIG = {"rpm": 100_000_000, "tpm": 1_000_000_000, "concurrency": 64}
HOSTILE = {"rpm": 10, "concurrency": 16}
BODY_LIMIT = 4 * 1024 * 1024  # the gateway's default max_body_bytes
KINDS = ("tools", "big", "n1000", "prompts", "slow-body", "unread")
PHASES = ("quiet", "hostile", "hostile", "quiet")
MAX_P99_RATIO = 2.0  # the normal keys' p99 beside the hostile key, over their p99 alone


def _chat(**fields: object) -> dict[str, object]:
    messages = [{"role": "user", "content": "Say something short."}]
    return {"model": MODEL, "messages": messages, "max_tokens": 16, **fields}


def hostile_bodies() -> dict[str, tuple[str, bytes]]:
    """Each hostile kind's path and body, built once (just under the body limit)."""
    margin = 1024
    skeleton = json.dumps(_chat(tools=[])).encode()
    lists = (BODY_LIMIT - len(skeleton) - margin) // 3
    tools = skeleton.replace(b'"tools": []', b'"tools": [' + b"[]," * (lists - 1) + b"[]]")
    filler = "x" * (BODY_LIMIT - margin - len(json.dumps(_chat())))
    big = {"model": MODEL, "messages": [{"role": "user", "content": filler}], "max_tokens": 16}
    prompts = {"model": MODEL, "prompt": ["Say something."] * 2000, "n": 8, "max_tokens": 16}
    return {
        "tools": ("/v1/chat/completions", tools),
        "big": ("/v1/chat/completions", json.dumps(big).encode()),
        "n1000": ("/v1/chat/completions", json.dumps(_chat(n=1000, best_of=1000)).encode()),
        "prompts": ("/v1/completions", json.dumps(prompts).encode()),
        "slow-body": ("/v1/chat/completions", json.dumps(_chat()).encode()),
        "unread": ("/v1/chat/completions", json.dumps(_chat(stream=True, user="slow")).encode()),
    }


async def hostile_one(
    address: tuple[str, int], host: str, secret: str, kind: str, path: str, body: bytes
) -> str:
    """One hostile request on a fresh connection; what came of it."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        request = build_request(host, path, body, secret)
        if kind == "slow-body":
            head, _, rest = request.partition(b"\r\n\r\n")
            writer.write(head + b"\r\n\r\n")
            for byte in rest:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        else:
            writer.write(request)
            await writer.drain()
        if kind == "unread":
            await asyncio.sleep(3.0)  # the client stops reading, then goes
            return "unread"
        status, _, _ = await read_response(reader, time.perf_counter())
        return str(status)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        return type(exc).__name__
    finally:
        writer.close()


async def hostile_sender(url: str, secret: str, seconds: float, connections: int) -> dict:
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    bodies = hostile_bodies()
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def loop(first: int) -> None:
        turn = first
        while time.monotonic() < deadline:
            kind = KINDS[turn % len(KINDS)]
            turn += 1
            path, body = bodies[kind]
            outcome = await hostile_one(address, parts.netloc, secret, kind, path, body)
            counts[f"{kind} {outcome}"] += 1

    await asyncio.gather(*(loop(i) for i in range(connections)))
    return dict(sorted(counts.items()))


async def normal_load(url: str, secrets: list[str], seconds: float, rate: float) -> LoadResult:
    """Short chat completions from the normal keys, ``rate`` a second in all, paced."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    body = json.dumps(_chat()).encode()
    workers = 2 * len(secrets)
    interval = workers / rate
    result = LoadResult()
    now = time.perf_counter()
    await asyncio.gather(
        *(
            worker(
                address,
                build_request(
                    parts.netloc, "/v1/chat/completions", body, secrets[i % len(secrets)]
                ),
                now + seconds,
                False,
                result,
                interval=interval,
                first_at=now + interval * i / workers,
            )
            for i in range(workers)
        )
    )
    return result


def _summary(latencies: list[float]) -> dict[str, object]:
    def ms(pct: float) -> float | None:
        value = percentile(latencies, pct)
        return None if value is None else round(value * 1000, 2)

    return {"requests": len(latencies), "p50_ms": ms(50), "p99_ms": ms(99), "max_ms": ms(100)}


def run_phases(url: str, secrets: dict[str, str], args: argparse.Namespace) -> dict:
    normal = [secrets[name] for name in NORMAL_KEYS]
    phases: list[dict[str, object]] = []
    pooled: dict[str, list[float]] = {"quiet": [], "hostile": []}
    hostile_counts: Counter[str] = Counter()
    for mode in PHASES:
        sender = None
        if mode == "hostile":
            argv = ["taskset", "-c", "0", sys.executable, __file__, "--hostile-sender", url]
            argv += [secrets["hostile"], str(args.phase), str(args.hostile_connections)]
            sender = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            time.sleep(1.0)  # the sender builds its bodies and starts
        result = asyncio.run(normal_load(url, normal, args.phase, args.rate))
        if sender is not None:
            out, _ = sender.communicate(timeout=args.phase + 30)
            hostile_counts.update(json.loads(out.strip().splitlines()[-1]))
        pooled[mode] += result.latencies
        statuses = {str(status): count for status, count in sorted(result.statuses.items())}
        phases.append({"mode": mode, **_summary(result.latencies), **statuses, **result.errors})
        print(json.dumps(phases[-1]), file=sys.stderr, flush=True)
    quiet, hostile = _summary(pooled["quiet"]), _summary(pooled["hostile"])
    quiet_p99, hostile_p99 = percentile(pooled["quiet"], 99), percentile(pooled["hostile"], 99)
    ratio = round(hostile_p99 / quiet_p99, 2) if quiet_p99 and hostile_p99 else None
    return {
        "phases": phases,
        "quiet": quiet,
        "hostile": hostile,
        "p99_ratio": ratio,
        "hostile_sent": dict(sorted(hostile_counts.items())),
        "ok": ratio is not None and ratio <= MAX_P99_RATIO,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--hostile-sender":
        url, secret, seconds, connections = sys.argv[2:6]
        counts = asyncio.run(hostile_sender(url, secret, float(seconds), int(connections)))
        print(json.dumps(counts), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=100.0, help="normal requests/s in all")
    parser.add_argument("--hostile-connections", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vkit-soak-hostile-") as tmp:
        work = Path(tmp)
        keys = work / "keys.yaml"
        secrets = {name: add_key(keys, name, **BIG) for name in NORMAL_KEYS}
        secrets["hostile"] = add_key(keys, "hostile", **HOSTILE)
        with stand_in_and_gateway(work, keys, {}) as (url, _):
            result = run_phases(url, secrets, args)
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
