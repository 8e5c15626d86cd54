"""Hostile bodies beside normal traffic: how long other keys wait while one key attacks.

The stand-in upstream and the load on CPU 0, ``vkit gateway`` on CPU 1 (``taskset``), as in
``bench/run.py``. Two phases of ``--duration`` seconds each. A calm key sends small chat
requests at ``--concurrency`` in both. In the second phase, two hostile keys also send
``--hostile`` requests at a time, looping over these bodies:

- 4 MiB of empty lists, from a key within its limits;
- 4 MiB of zeros, from the same key;
- just under the containers bound, 16,000 empty lists (accepted);
- 4 MiB of one string (accepted);
- 4 MiB of empty lists from a key past its requests per minute (429).

Prints one JSON line: each phase's calm p50/p99/max, the ratio of the p99s, and the hostile
answers by status. The issue's bar: the calm key's p99 within 2x of the phase without the
hostile keys.

    .venv/bin/python bench/hostile.py [--duration 20] [--concurrency 4] [--hostile 2] \\
        [--tree DIR]

``--tree DIR`` runs the gateway of another source tree (``git archive`` of the code before a
change), as ``bench/run.py --baseline`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from loadgen import build_request, percentile, read_response, run_load
from run import MODEL, ROOT, process, wait_http

from gateway.keyfile import add_key
from vkit.stack.ports import free_port

FOUR_MIB = 4 * 1024 * 1024


def hostile_bodies() -> list[bytes]:
    """The within-limits key's bodies, in the order they are sent."""
    head = f'{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"tools":['
    prefix = head.encode()

    def filled(unit: bytes, size: int = FOUR_MIB) -> bytes:
        count = (size - len(prefix) - 2) // (len(unit) + 1)
        return prefix + b",".join([unit] * count) + b"]}"

    many_containers = prefix + b",".join([b"[]"] * 16_000) + b"]}"
    text = b"a" * (FOUR_MIB - 200)
    one_string = b'{"model":"%s","messages":[{"role":"user","content":"%s"}]}' % (
        MODEL.encode(),
        text,
    )
    return [filled(b"[]"), filled(b"0"), many_containers, one_string]


async def send(address: tuple[str, int], request: bytes) -> int:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(request)
        await writer.drain()
        status, _, _ = await read_response(reader, time.perf_counter())
        return status
    finally:
        writer.close()


async def attack(
    address: tuple[str, int], requests: list[bytes], deadline: float, statuses: Counter[str]
) -> None:
    for request in itertools.cycle(requests):
        if time.perf_counter() >= deadline:
            return
        try:
            statuses[str(await send(address, request))] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            statuses[type(exc).__name__] += 1


async def phase(
    url: str, calm: str, hostile: list[bytes], args: argparse.Namespace
) -> dict[str, object]:
    host, port = url.removeprefix("http://").split(":")
    address = (host, int(port))
    statuses: Counter[str] = Counter()
    deadline = time.perf_counter() + args.duration
    attackers = [
        attack(address, hostile[i::2] or hostile, deadline, statuses)
        for i in range(args.hostile if hostile else 0)
    ]
    result, *_ = await asyncio.gather(
        run_load(url, args.concurrency, args.duration, False, calm, MODEL), *attackers
    )
    return {
        "calm_p50_ms": round((percentile(result.latencies, 50) or 0) * 1000, 1),
        "calm_p99_ms": round((percentile(result.latencies, 99) or 0) * 1000, 1),
        "calm_max_ms": round(max(result.latencies, default=0) * 1000, 1),
        "calm_statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "hostile_statuses": dict(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="the calm key's")
    parser.add_argument("--hostile", type=int, default=2, help="hostile requests at a time")
    parser.add_argument("--tree", type=Path, help="run the gateway of this source tree")
    parser.add_argument(
        "--only", type=int, help="send only this one of the five bodies (0-4, in the list above)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vkit-hostile-") as tmp:
        work = Path(tmp)
        keys = work / "keys.yaml"
        calm = add_key(keys, "calm", rpm=100_000_000, tpm=1_000_000_000, concurrency=1000)
        within = add_key(keys, "within", rpm=100_000_000, tpm=1_000_000_000, concurrency=8)
        spent = add_key(keys, "spent", rpm=1, tpm=1_000_000_000)
        upstream_port, port = free_port(), free_port()
        upstream = [sys.executable, str(ROOT / "bench" / "upstream.py")]
        upstream += ["--port", str(upstream_port), "--model", MODEL]
        env = {
            "VKIT_GATEWAY_UPSTREAMS": f"http://127.0.0.1:{upstream_port}",
            "VKIT_GATEWAY_KEYS_FILE": str(keys),
            "VKIT_GATEWAY_LOG_LEVEL": "warning",
        }
        if args.tree is not None:
            env["PYTHONPATH"] = str(args.tree)
        gateway = [sys.executable, "-m", "vkit", "gateway", "--host", "127.0.0.1"]
        gateway += ["--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        netloc, path = f"127.0.0.1:{port}", "/v1/chat/completions"
        hostile = [build_request(netloc, path, body, within) for body in hostile_bodies()]
        hostile.append(build_request(netloc, path, hostile_bodies()[0], spent))
        if args.only is not None:
            hostile = [hostile[args.only]]
        with (
            process(upstream, 0, work / "upstream.log"),
            process(gateway, 1, work / "gateway.log", env, cwd=args.tree),
        ):
            wait_http(f"http://127.0.0.1:{upstream_port}/health", 10)
            wait_http(f"{url}/readyz", 30)
            small = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode()
            spend = build_request(netloc, "/v1/completions", small, spent)
            assert asyncio.run(send(("127.0.0.1", port), spend)) == 200  # its one request
            quiet = asyncio.run(phase(url, calm, [], args))
            attacked = asyncio.run(phase(url, calm, hostile, args))
    quiet_p99, attacked_p99 = float(quiet["calm_p99_ms"]), float(attacked["calm_p99_ms"])
    ratio = round(attacked_p99 / quiet_p99, 2) if quiet_p99 else None
    line = {"quiet": quiet, "attacked": attacked, "p99_ratio": ratio}
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
