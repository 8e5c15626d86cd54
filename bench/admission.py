"""Admission caps and priority classes on real vLLM CPU replicas: the numbers behind
docs/gateway-keys.md#priority-classes and docs/vllm-server.md#admission-caps.

Two replicas of the tiny model (``vkit launch --cpu``, each on its own core, two requests
running at a time: ``--max-num-seqs 2``), both on ``--scheduling-policy priority``: one
without a cap, one with ``--max-num-queued-reqs CAP``. Measured straight on vLLM (or through
the gateway, below):

1. a burst of ``--burst`` streamed requests at once on each: the admitted requests' time to
   first token (median, max) and how many were refused (503) -- with the cap, the
   admitted ones no longer wait behind the whole burst;
2. on the uncapped replica, busy with ``--batch`` batch requests (priority 100, of
   ``--batch-tokens``), once two of them stream (the rest wait): the time to first token of
   one interactive request sent with priority 0, and with the batch requests' own priority
   (what happens without classes), beside the same request on the idle replica; and how
   many batch requests had their first token after it.

With ``--through gateway`` the same requests go through a real gateway (``vkit gateway``, one
in front of each replica) with two keys: ``interactive`` and ``batch`` (``priority: batch``).
The gateway sets each request's priority from its key (the bodies' own ``priority`` is at
most raised), retries vLLM's queue-full 503 elsewhere (here: no other replica) and answers
its own 503 + ``Retry-After``; "no classes" sends the interactive request with the batch key.

    .venv/bin/python -m bench.admission [--burst 16] [--cap 4] [--batch 8] [--tokens 64]
                                        [--batch-tokens N] [--through vllm|gateway]

(from the repository's root: it starts the replicas as the engine tests do, ``tests.engine``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from gateway.keyfile import add_key
from launcher.supervision.tiny_model import TINY_MODEL_NAME, build_tiny_model
from tests.engine import EngineReplica
from vkit.stack.ports import free_port

BATCH_PRIORITY = 100
MAX_NUM_SEQS = 2  # each replica's: the rest of a batch waits
AUTH: dict[int, dict[str, str]] = {}  # priority -> the gateway key's header (gateway mode)


def body(tokens: int, priority: int) -> dict[str, object]:
    return {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "priority": priority,
    }


async def ttft(
    client: httpx.AsyncClient,
    url: str,
    tokens: int,
    priority: int,
    started: asyncio.Event | None = None,
) -> float | None:
    """Seconds to the first streamed token (``started`` set then); ``None`` when refused."""
    began = time.monotonic()
    headers = AUTH.get(priority, {})
    async with client.stream(
        "POST", url + "/v1/chat/completions", json=body(tokens, priority), headers=headers
    ) as r:
        if r.status_code == 503:
            await r.aread()
            return None
        r.raise_for_status()
        first: float | None = None
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {") and '"content"' in line:
                first = time.monotonic() - began
                if started is not None:
                    started.set()
        return first


def summary(values: list[float | None]) -> str:
    served = sorted(v for v in values if v is not None)
    refused = len(values) - len(served)
    if not served:
        return f"admitted 0, refused {refused}"
    return (
        f"admitted {len(served)}, refused {refused}: TTFT median {statistics.median(served):.2f}"
        f" s, max {served[-1]:.2f} s"
    )


async def burst(client: httpx.AsyncClient, url: str, count: int, tokens: int) -> str:
    return summary(await asyncio.gather(*(ttft(client, url, tokens, 0) for _ in range(count))))


async def running(events: list[asyncio.Event], count: int, timeout: float) -> str:
    """Until ``count`` batch requests have streamed a token (vLLM runs them, the others wait
    behind them). Not vLLM's gauges: on a CPU-starved machine its ``/metrics`` answers
    seconds late, streamed tokens do not (docs/vllm-server.md#priority-scheduling)."""
    began = time.monotonic()
    while time.monotonic() < began + timeout:
        if sum(event.is_set() for event in events) >= count:
            await asyncio.sleep(0.5)  # the rest of the batch is in by now: queued
            return f"{count} running after {time.monotonic() - began:.1f} s"
        await asyncio.sleep(0.05)
    return f"not {count} running in {timeout:.0f} s"


async def interactive_under_batch(
    client: httpx.AsyncClient, url: str, args: argparse.Namespace, priority: int
) -> tuple[float | None, int, str]:
    """One interactive request's TTFT (priority ``priority``) once ``args.batch`` batch
    requests are in vLLM, queued and running; and how many of them had their first token
    after it."""
    began = time.monotonic()
    events = [asyncio.Event() for _ in range(args.batch)]
    background = [
        asyncio.create_task(ttft(client, url, args.batch_tokens, BATCH_PRIORITY, event))
        for event in events
    ]
    seen = await running(events, MAX_NUM_SEQS, timeout=120)
    sent = time.monotonic()
    measured = await ttft(client, url, 8, priority)
    batch_ttfts = await asyncio.gather(*background)
    if measured is None:
        return None, 0, seen
    later = sum(1 for t in batch_ttfts if t is not None and began + t > sent + measured)
    return measured, later, seen


async def measure(args: argparse.Namespace, free: str, capped: str) -> None:
    print(f"through {args.through}")
    async with httpx.AsyncClient(timeout=600) as client:
        await ttft(client, free, 4, 0)  # warm both
        await ttft(client, capped, 4, 0)
        print(f"burst of {args.burst}, {args.tokens} tokens each, max-num-seqs 2")
        print(f"  no cap:                   {await burst(client, free, args.burst, args.tokens)}")
        capped_line = await burst(client, capped, args.burst, args.tokens)
        print(f"  --max-num-queued-reqs {args.cap}: {capped_line}")
        idle = await ttft(client, free, 8, 0)
        print(
            f"interactive request (8 tokens), {args.batch} batch requests of"
            f" {args.batch_tokens} in vLLM"
        )
        print(f"  idle replica:                       TTFT {idle:.2f} s")
        for label, priority in (("interactive (0)", 0), ("no classes (100)", BATCH_PRIORITY)):
            value, later, seen = await interactive_under_batch(client, free, args, priority)
            shown = "refused" if value is None else f"{value:.2f} s"
            print(
                f"  busy, priority {label:17}: TTFT {shown}, before {later} of the batch's"
                f" first tokens (batch {seen})"
            )


@contextmanager
def gateway(upstream: str, keys: Path, log: Path) -> Iterator[str]:
    """``vkit gateway`` in front of ``upstream`` with the keys file ``keys``; its URL."""
    port = free_port()
    env = {
        **os.environ,
        "VKIT_GATEWAY_UPSTREAMS": upstream,
        "VKIT_GATEWAY_KEYS_FILE": str(keys),
        "VKIT_GATEWAY_LOG_LEVEL": "warning",
        "VKIT_GATEWAY_TIMEOUTS__FIRST_BYTE": "300",
        "VKIT_GATEWAY_TIMEOUTS__TOTAL": "600",
    }
    argv = [sys.executable, "-m", "vkit", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited; see {log}")
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the gateway was not ready in 60 s; see {log}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(args: argparse.Namespace, work: Path, free: str, capped: str) -> None:
    if args.through == "vllm":
        asyncio.run(measure(args, free, capped))
        return
    keys = work / "keys.yaml"
    limits = {"rpm": 100_000, "tpm": 100_000_000, "concurrency": 1000}
    for priority, name in ((0, "interactive"), (BATCH_PRIORITY, "batch")):
        secret = add_key(keys, name, priority=name, **limits)
        AUTH[priority] = {"Authorization": f"Bearer {secret}"}
    with (
        gateway(free, keys, work / "gateway-free.log") as free_url,
        gateway(capped, keys, work / "gateway-capped.log") as capped_url,
    ):
        asyncio.run(measure(args, free_url, capped_url))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--cap", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, help="a batch request's (default: --tokens)")
    parser.add_argument("--through", choices=("vllm", "gateway"), default="vllm")
    args = parser.parse_args()
    args.batch_tokens = args.batch_tokens or args.tokens
    work = Path(tempfile.mkdtemp(prefix="vkit-admission-"))
    model = build_tiny_model(work / TINY_MODEL_NAME)
    cores = os.cpu_count() or 1
    common = ("--", "--scheduling-policy", "priority", "--max-num-seqs", str(MAX_NUM_SEQS))
    replicas = [
        EngineReplica(
            model_dir=model,
            port=free_port(),
            cpu_core=index % cores,
            log_path=work / f"replica-{index}.log",
            extra_args=extra,
        )
        for index, extra in enumerate((common, (*common, "--max-num-queued-reqs", str(args.cap))))
    ]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        run(args, work, replicas[0].base_url, replicas[1].base_url)
    finally:
        for replica in replicas:
            replica.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
