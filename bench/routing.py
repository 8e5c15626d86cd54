"""Round-robin (the gateway in front of NGINX) against the gateway's aware router, on real vLLM.

On loopback only: two ``vkit launch --cpu`` replicas of the tiny model (prefix caching on,
each pinned to its own core), NGINX round-robining across them, and two ``vkit gateway``
processes: ``round_robin`` in front of NGINX, ``aware`` in front of the replicas. The same
seeded workloads run through each, alternating A/B/B/A:

1. ``prefix``: ``--tenants`` tenants (12), each with its own system prompt of 1,000-1,500
   tokens (counted with the model's tokenizer; the tiny model serves 2,048), and short user
   turns, arrivals interleaved across tenants, ``--concurrency`` at a time, 8 tokens out;
2. ``skewed``: short prompts, one in four generating 256 tokens and the rest 8;
3. ``uniform``: distinct prompts of about 100 characters (each its own affinity key), 32
   tokens out each: the fair-share check (no replica above 1.3x its share).

Each run gets tenant prompts of its own (same lengths, a different salt), so no run is
served from the prefix cache that another run filled. Each replica's KV cache is sized
(``--num-gpu-blocks-override``, blocks of 128 tokens) to hold ``--cache-share`` (0.6) of all
tenants' prompt tokens: one replica cannot hold every tenant's prompt but two can, the
case where routing decides the hit rate. ``--kv-blocks N`` sets the blocks instead (0:
vLLM's own sizing, 1 GiB here, where every prompt fits everywhere and round-robin loses
nothing). The capacity vLLM reports (``vllm:cache_config_info``) is printed per replica.

Per run: the prefix-cache hit rate from vLLM's counters (deltas of
``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``), p50/p99 time to
first token at the client, output tokens/s, each replica's share of the requests
(``vllm:request_success_total`` deltas) and hit rate, the aware gateway's routing decisions
by reason, errors. Prints a table and one JSON line per run.

    .venv/bin/python bench/routing.py [--tenants 12] [--cache-share 0.6] [--kv-blocks N]
        [--workdir DIR]   (keeps the logs: DIR/logs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

from launcher.supervision.tiny_model import TINY_MODEL_NAME, build_tiny_model
from vkit.stack.demo_key import add_demo_key
from vkit.stack.ports import pick_free_ports
from vkit.stack.processes import ProcessGroup
from vkit.stack.stack_plan import StackLayout, StackPorts, gateway_spec, plan_stack
from vkit.stack.up_settings import DemoKeyLimits, UpSettings

MAX_MODEL_LEN = 2048
BLOCK_SIZE = 128  # vLLM's CPU default
_TEXT = (
    "vkit deploys vLLM behind a gateway with keys limits and metrics the quick brown fox "
    "jumps over the lazy dog while engine streams tokens continuous batching keeps "
    "accelerator busy KV cache holds context answer briefly politely in plain English"
)
WORDS = tuple(_TEXT.split())


@dataclasses.dataclass
class Result:
    ttft: float | None
    tokens: int
    error: str = ""


def tenant_prompts(tokenizer: Any, count: int, salt: str, rng: random.Random) -> list[str]:
    """``count`` system prompts of 1,000-1,500 tokens each, unique to ``salt``."""
    prompts = []
    for tenant in range(count):
        target = rng.randint(1000, 1500)
        words = [f"Tenant {tenant} run {salt}:"]
        while len(tokenizer.encode(" ".join(words)).ids) < target:
            words.extend(rng.choice(WORDS) for _ in range(16))
        prompts.append(" ".join(words))
    return prompts


def prefix_workload(prompts: list[str], per_tenant: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    order = [t for _ in range(per_tenant) for t in rng.sample(range(len(prompts)), len(prompts))]
    bodies = []
    for turn, tenant in enumerate(order):
        messages = [
            {"role": "system", "content": prompts[tenant]},
            {"role": "user", "content": f"Question {turn}: {rng.choice(WORDS)}?"},
        ]
        bodies.append({"messages": messages, "max_tokens": 8})
    return bodies


def skewed_workload(count: int, seed: int, salt: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        long = rng.random() < 0.25
        messages = [{"role": "user", "content": f"Run {salt} item {i}: {rng.choice(WORDS)}"}]
        bodies.append({"messages": messages, "max_tokens": 256 if long else 8})
    return bodies


def uniform_workload(count: int, seed: int, salt: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        text = f"Run {salt} item {i}: " + " ".join(rng.choice(WORDS) for _ in range(16))
        bodies.append({"messages": [{"role": "user", "content": text}], "max_tokens": 32})
    return bodies


async def one_request(
    session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any]
) -> Result:
    payload = {
        "model": TINY_MODEL_NAME,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        **body,
    }
    sent = time.perf_counter()
    ttft, tokens = None, 0
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with session.post(f"{url}/v1/chat/completions", json=payload, headers=headers) as r:
            if r.status != 200:
                return Result(None, 0, f"status {r.status}: {(await r.text())[:120]}")
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Result(ttft, tokens, f"stream error: {event['error']}")
                if ttft is None and any(
                    c.get("delta", {}).get("content") for c in event.get("choices", [])
                ):
                    ttft = time.perf_counter() - sent
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(ttft, tokens, repr(exc))
    return Result(ttft, tokens)


async def run_load(
    url: str, key: str, bodies: list[dict[str, Any]], concurrency: int
) -> list[Result]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    results: list[Result] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            while not queue.empty():
                results.append(await one_request(session, url, key, queue.get_nowait()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def counters(replicas: list[str]) -> list[dict[str, float]]:
    wanted = ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:request_success")
    found = []
    for base in replicas:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        values = dict.fromkeys(wanted, 0.0)
        for family in text_string_to_metric_families(text):
            if family.name in values:
                values[family.name] += sum(
                    s.value for s in family.samples if s.name.endswith("_total")
                )
        found.append(values)
    return found


def decisions(admin: str) -> dict[str, float]:
    """The aware gateway's routing decisions so far, by reason."""
    text = httpx.get(f"{admin}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "vkit_gateway_routing_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["reason"]] = sample.value
    return found


def cache_config(base: str) -> str:
    """What vLLM says of its KV cache: blocks, block size, prefix caching."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:cache_config_info" and family.samples:
            labels = family.samples[0].labels
            keys = ("num_gpu_blocks", "block_size", "enable_prefix_caching")
            tokens = int(labels.get("num_gpu_blocks") or 0) * int(labels.get("block_size") or 0)
            return ", ".join(f"{k}={labels.get(k)}" for k in keys) + f" ({tokens} tokens)"
    return "no vllm:cache_config_info"


def pct(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(
    mode: str, workload: str, results: list[Result], wall: float, before: list, after: list
) -> dict[str, Any]:
    delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    hits = sum(d["vllm:prefix_cache_hits"] for d in delta)
    queries = sum(d["vllm:prefix_cache_queries"] for d in delta)
    served = [d["vllm:request_success"] for d in delta]
    ttfts = [r.ttft for r in results if r.ttft is not None and not r.error]
    return {
        "mode": mode,
        "workload": workload,
        "requests": len(results),
        "hit_rate": hits / queries if queries else 0.0,
        "ttft_p50_ms": 1000 * (pct(ttfts, 0.5) or 0),
        "ttft_p99_ms": 1000 * (pct(ttfts, 0.99) or 0),
        "out_tok_s": sum(r.tokens for r in results) / wall,
        "shares": [round(s / max(sum(served), 1), 3) for s in served],
        "replica_hit_rates": [
            round(d["vllm:prefix_cache_hits"] / d["vllm:prefix_cache_queries"], 3)
            if d["vllm:prefix_cache_queries"]
            else 0.0
            for d in delta
        ],
        "errors": sum(1 for r in results if r.error),
        "first_error": next((r.error for r in results if r.error), ""),
        "wall_s": wall,
    }


def start_stack(
    kv_blocks: int, run_dir: Path, group: ProcessGroup, model: Path
) -> tuple[dict[str, str], list[str], str, str]:
    layout = StackLayout(run_dir)
    gateway, nginx, r0, r1, aware, admin, admin2 = pick_free_ports(7)
    ports = StackPorts(gateway=gateway, nginx=nginx, replicas=(r0, r1), gateway_admin=admin)
    settings = UpSettings(max_model_len=MAX_MODEL_LEN, run_dir=run_dir, cpu_kvcache_gib=1)
    plan = plan_stack(
        settings, ports, layout, model_path=str(model), python=sys.executable, cpu_count=2
    )
    layout.nginx_conf.write_text(plan.nginx_conf)
    limits = DemoKeyLimits(rpm=100_000, tpm=100_000_000, concurrency=64, max_tokens=512)
    key = add_demo_key(layout.keys_file, "bench", limits, [TINY_MODEL_NAME])
    extra: tuple[str, ...] = ("--", "--enable-prefix-caching")
    if kv_blocks:
        extra += ("--num-gpu-blocks-override", str(kv_blocks))
    specs = [
        dataclasses.replace(s, argv=s.argv + extra) if s.name.startswith("replica-") else s
        for s in plan.specs
    ]
    aware_ports = dataclasses.replace(ports, gateway=aware, gateway_admin=admin2)
    aware_spec = gateway_spec(UpSettings(routing="aware"), layout, aware_ports, sys.executable)
    specs.append(
        dataclasses.replace(
            aware_spec, name="gateway-aware", log_path=layout.logs / "gateway-aware.log"
        )
    )
    backends = [group.start(s) for s in specs if not s.name.startswith("gateway")]
    print(f"starting 2 replicas and NGINX (logs in {layout.logs}) ...", flush=True)
    group.wait_ready(backends, 600)
    group.wait_ready([group.start(s) for s in specs if s.name.startswith("gateway")], 120)
    urls = {"round_robin": f"http://127.0.0.1:{gateway}", "aware": f"http://127.0.0.1:{aware}"}
    replicas = [f"http://127.0.0.1:{p}" for p in ports.replicas]
    return urls, replicas, key, f"http://127.0.0.1:{admin2}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| workload | mode | run | hit rate | TTFT p50 ms | TTFT p99 ms | out tok/s "
        "| replica shares | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['workload']} | {row['mode']} | {row['run']} | {row['hit_rate']:.3f} | "
            f"{row['ttft_p50_ms']:.0f} | {row['ttft_p99_ms']:.0f} | {row['out_tok_s']:.0f} | "
            f"{' / '.join(f'{s:.2f}' for s in row['shares'])} | {row['errors']} |"
        )
    for workload in sorted({r["workload"] for r in rows}):
        mean = {
            mode: {
                k: statistics.mean(
                    r[k] for r in rows if r["workload"] == workload and r["mode"] == mode
                )
                for k in ("hit_rate", "ttft_p50_ms", "ttft_p99_ms", "out_tok_s")
            }
            for mode in ("round_robin", "aware")
        }
        rr, aw = mean["round_robin"], mean["aware"]
        ratio = aw["hit_rate"] / rr["hit_rate"] if rr["hit_rate"] else float("inf")
        print(
            f"{workload}: hit rate {rr['hit_rate']:.3f} -> {aw['hit_rate']:.3f} (x{ratio:.2f}); "
            f"TTFT p99 {rr['ttft_p99_ms']:.0f} -> {aw['ttft_p99_ms']:.0f} ms; "
            f"out tok/s {rr['out_tok_s']:.0f} -> {aw['out_tok_s']:.0f}; "
            f"largest share x fair share (aware): {fairness(rows, workload):.2f}"
        )


def fairness(rows: list[dict[str, Any]], workload: str) -> float:
    """The aware router's largest replica share over the fair share, worst run."""
    aware = [r for r in rows if r["workload"] == workload and r["mode"] == "aware"]
    return max(max(r["shares"]) * len(r["shares"]) for r in aware)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tenants", type=int, default=12)
    parser.add_argument("--requests-per-tenant", type=int, default=8)
    # p99 of fewer than ~100 requests is their slowest one: 96 and 64 keep it a percentile.
    parser.add_argument("--skewed-requests", type=int, default=96)
    parser.add_argument("--uniform-requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--cache-share",
        type=float,
        default=0.6,
        help="each replica's KV cache as a share of all tenants' prompt tokens",
    )
    parser.add_argument(
        "--kv-blocks", type=int, default=None, help="KV blocks per replica instead (0: vLLM's)"
    )
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--workdir", type=Path, help="keep the model, logs and NGINX files here (else a temp dir)"
    )
    args = parser.parse_args()
    from tokenizers import Tokenizer

    rows: list[dict[str, Any]] = []
    workdir = (
        contextlib.nullcontext(str(args.workdir))
        if args.workdir
        else tempfile.TemporaryDirectory(prefix="vkit-routing-")
    )
    with workdir as tmp, ProcessGroup() as group:
        layout = StackLayout(Path(tmp))
        for folder in (layout.logs, layout.nginx_prefix):
            folder.mkdir(parents=True, exist_ok=True)
        model = build_tiny_model(layout.tiny_model_dir)
        tokenizer = Tokenizer.from_file(str(layout.tiny_model_dir / "tokenizer.json"))
        sample = tenant_prompts(tokenizer, args.tenants, "size", random.Random(args.seed))
        prefix_tokens = sum(len(tokenizer.encode(p).ids) for p in sample)
        kv_blocks = args.kv_blocks
        if kv_blocks is None:
            kv_blocks = math.ceil(args.cache_share * prefix_tokens / BLOCK_SIZE)
        print(
            f"{args.tenants} tenants, {prefix_tokens} system-prompt tokens in all; "
            f"KV blocks per replica: {kv_blocks or 'vLLM default'}",
            flush=True,
        )
        urls, replicas, key, admin = start_stack(kv_blocks, Path(tmp), group, model)
        for base in replicas:
            print(f"{base}: {cache_config(base)}", flush=True)
        # Warm both paths once (vLLM's first requests are slow on CPU), outside the counts.
        asyncio.run(run_load(urls["aware"], key, skewed_workload(4, 0, "warm"), 2))
        asyncio.run(run_load(urls["round_robin"], key, skewed_workload(4, 1, "warm"), 2))
        for run, mode in enumerate(("round_robin", "aware", "aware", "round_robin")):
            for workload in ("prefix", "skewed", "uniform"):
                salt = f"{run}"
                if workload == "prefix":
                    prompts = tenant_prompts(
                        tokenizer, args.tenants, salt, random.Random(args.seed)
                    )
                    bodies = prefix_workload(prompts, args.requests_per_tenant, args.seed)
                elif workload == "skewed":
                    bodies = skewed_workload(args.skewed_requests, args.seed, salt)
                else:
                    bodies = uniform_workload(args.uniform_requests, args.seed, salt)
                before, routed = counters(replicas), decisions(admin)
                began = time.perf_counter()
                results = asyncio.run(run_load(urls[mode], key, bodies, args.concurrency))
                wall = time.perf_counter() - began
                time.sleep(0.5)  # the counters of the last requests
                row = summarise(mode, workload, results, wall, before, counters(replicas))
                row["run"] = run + 1
                after = decisions(admin)
                row["decisions"] = {
                    k: v - routed.get(k, 0.0) for k, v in after.items() if v - routed.get(k, 0.0)
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
