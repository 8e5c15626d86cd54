"""Admission caps and priority classes on real vLLM CPU replicas: the numbers behind
docs/gateway-keys.md#priority-classes and docs/vllm-server.md#admission-caps.

Two replicas of the tiny model (``vkit launch --cpu``, each on its own core, two requests
running at a time: ``--max-num-seqs 2``), both on ``--scheduling-policy priority``: one
without a cap, one with ``--max-num-queued-reqs CAP``. Measured straight on vLLM (the
gateway's part, the retry and its 503, is the engine tests'):

1. a burst of ``--burst`` streamed requests at once on each: the admitted requests' time to
   first token (median, max) and how many were refused (503) -- with the cap, the
   admitted ones no longer wait behind the whole burst;
2. on the uncapped replica, busy with ``--batch`` batch requests (priority 100): the time to
   first token of one interactive request sent with priority 0, and with the batch
   requests' own priority (what happens without classes), beside the same request on the
   idle replica.

    .venv/bin/python -m bench.admission [--burst 16] [--cap 4] [--batch 8] [--tokens 64]

(from the repository's root: it starts the replicas as the engine tests do, ``tests.engine``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from launcher.supervision.tiny_model import TINY_MODEL_NAME, build_tiny_model
from tests.engine import EngineReplica
from vkit.stack.ports import free_port

BATCH_PRIORITY = 100


def body(tokens: int, priority: int) -> dict[str, object]:
    return {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "priority": priority,
    }


async def ttft(client: httpx.AsyncClient, url: str, tokens: int, priority: int) -> float | None:
    """Seconds to the first streamed token; ``None`` when refused (503)."""
    began = time.monotonic()
    async with client.stream(
        "POST", url + "/v1/chat/completions", json=body(tokens, priority)
    ) as r:
        if r.status_code == 503:
            await r.aread()
            return None
        r.raise_for_status()
        first: float | None = None
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {") and '"content"' in line:
                first = time.monotonic() - began
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


async def interactive_under_batch(
    client: httpx.AsyncClient, url: str, batch: int, tokens: int, priority: int
) -> float | None:
    """One interactive request's TTFT (priority ``priority``) while ``batch`` batch requests
    are queued and running."""
    background = [
        asyncio.create_task(ttft(client, url, tokens, BATCH_PRIORITY)) for _ in range(batch)
    ]
    await asyncio.sleep(0.5)  # the batch requests are in: two running, the rest waiting
    measured = await ttft(client, url, 8, priority)
    await asyncio.gather(*background)
    return measured


async def measure(args: argparse.Namespace, free: str, capped: str) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        await ttft(client, free, 4, 0)  # warm both
        await ttft(client, capped, 4, 0)
        print(f"burst of {args.burst}, {args.tokens} tokens each, max-num-seqs 2")
        print(f"  no cap:                   {await burst(client, free, args.burst, args.tokens)}")
        capped_line = await burst(client, capped, args.burst, args.tokens)
        print(f"  --max-num-queued-reqs {args.cap}: {capped_line}")
        idle = await ttft(client, free, 8, 0)
        print(f"interactive request (8 tokens), {args.batch} batch requests of {args.tokens}")
        print(f"  idle replica:                       TTFT {idle:.2f} s")
        for label, priority in (("interactive (0)", 0), ("no classes (100)", BATCH_PRIORITY)):
            value = await interactive_under_batch(client, free, args.batch, args.tokens, priority)
            print(f"  busy, priority {label:17}: TTFT {value:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--cap", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vkit-admission-"))
    model = build_tiny_model(work / TINY_MODEL_NAME)
    cores = os.cpu_count() or 1
    common = ("--", "--scheduling-policy", "priority", "--max-num-seqs", "2")
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
        asyncio.run(measure(args, replicas[0].base_url, replicas[1].base_url))
    finally:
        for replica in replicas:
            replica.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
