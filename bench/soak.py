"""Soak the vkit gateway: mixed traffic for a bounded time, then check memory and the limits.

On loopback only: the stand-in upstream (``bench/upstream.py``) and the load run on CPU 0,
one ``vkit gateway`` process (keys file, limits in memory, admin listener on) on CPU 1.
``--workers`` keep-alive clients send, until ``--duration`` seconds or ``--max-requests``
requests, whichever comes first, a mix of:

    ok         chat completion, whole answer              stream      streamed, read to the end
    hang-up    streamed, the client closes mid-stream      gone        the client closes at once
    limited    a key with a small rpm (429s)               500 / 503   the upstream answers so
    drop       the upstream closes without answering (502)

Then it checks, and prints as one JSON line (exit status 1 if a check fails):

- memory: the gateway's RSS after ``--warmup`` seconds and at the end; the growth must stay
  under ``--max-growth`` (5 %);
- the counts return to zero: ``vkit_gateway_in_flight_requests`` is 0, and each key can
  again run exactly its ``concurrency`` of slow streams at once (one more is a 429), so
  no slot of the limiter leaked.

    .venv/bin/python bench/soak.py [--duration 600] [--max-requests 2000000] [--workers 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from loadgen import build_request, read_response
from prometheus_client.parser import text_string_to_metric_families
from run import MODEL, ROOT, process, rss_mb, wait_http

from gateway.keyfile import add_key
from vkit.stack.ports import free_port

# (name, weight): what each request of the mix does; see the module docstring.
MIX = (
    ("ok", 30),
    ("stream", 20),
    ("hang-up", 10),
    ("gone", 5),
    ("limited", 15),
    ("500", 7),
    ("503", 7),
    ("drop", 6),
)
BIG = {"rpm": 100_000_000, "tpm": 1_000_000_000}
CONCURRENCY = {"soak": 48, "tight": 2}


class Traffic:
    """Requests for each kind of the mix, and what came back."""

    def __init__(self, url: str, secrets: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.secrets = secrets
        self.statuses: Counter[str] = Counter()
        self.sent = 0
        host = parts.netloc

        def request(key: str, stream: bool, user: str | None = None) -> bytes:
            body: dict[str, object] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Say something short."}],
                "max_tokens": 16,
                "stream": stream,
            }
            if user:
                body["user"] = user  # the stand-in's fault switch
            path = "/v1/chat/completions"
            return build_request(host, path, json.dumps(body).encode(), secrets[key])

        self.requests = {
            "ok": request("soak", False),
            "stream": request("soak", True),
            "hang-up": request("soak", True, "slow"),
            "gone": request("soak", True, "slow"),
            "limited": request("tight", False),
            "500": request("soak", False, "status-500"),
            "503": request("soak", False, "status-503"),
            "drop": request("soak", False, "drop"),
            "slow": request("soak", True, "slow"),
            "slow-tight": request("tight", True, "slow"),
        }

    async def worker(self, deadline: float, budget: list[int], seed: int) -> None:
        rng = random.Random(seed)
        kinds = [name for name, _ in MIX]
        weights = [weight for _, weight in MIX]
        reader = writer = None
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            kind = rng.choices(kinds, weights)[0]
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(*self.address)
                assert reader is not None
                writer.write(self.requests[kind])
                self.sent += 1
                if kind in ("hang-up", "gone"):
                    if kind == "hang-up":
                        await reader.readuntil(b"data: ")  # the first event, then hang up
                    writer.close()
                    reader = writer = None
                    self.statuses[kind] += 1
                    continue
                status, _, keep_alive = await read_response(reader, time.perf_counter())
                self.statuses[f"{kind} {status}"] += 1
                if not keep_alive:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.statuses[f"{kind} {type(exc).__name__}"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def at_once(self, kind: str, count: int) -> Counter[int]:
        """``count`` requests of ``kind`` in flight together, each on its own connection."""

        async def one() -> int:
            reader, writer = await asyncio.open_connection(*self.address)
            try:
                writer.write(self.requests[kind])
                status, _, _ = await read_response(reader, time.perf_counter())
                return status
            finally:
                writer.close()

        return Counter(await asyncio.gather(*(one() for _ in range(count))))


def scrape(admin: str) -> str:
    with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(admin: str, name: str) -> float:
    for line in scrape(admin).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise LookupError(name)


def totals(admin: str, name: str, label: str) -> dict[str, float]:
    """``name``'s samples summed by one label, as the gateway counted them."""
    found: Counter[str] = Counter()
    for family in text_string_to_metric_families(scrape(admin)):
        for sample in family.samples:
            if sample.name == name:
                found[sample.labels.get(label, "")] += sample.value
    return dict(sorted(found.items()))


async def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


async def soak(args: argparse.Namespace, url: str, admin: str, pid: int, traffic: Traffic) -> dict:
    started = time.monotonic()
    deadline = started + args.duration
    budget = [args.max_requests]
    workers = [
        asyncio.create_task(traffic.worker(deadline, budget, seed)) for seed in range(args.workers)
    ]
    samples: list[tuple[float, float]] = []
    warm_rss = None
    while not all(w.done() for w in workers):
        await asyncio.sleep(min(args.sample_every, max(deadline - time.monotonic(), 0.1)))
        elapsed = time.monotonic() - started
        samples.append((round(elapsed, 1), round(rss_mb(pid), 2)))
        if warm_rss is None and elapsed >= args.warmup:
            warm_rss = samples[-1][1]
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - started
    final_rss = round(rss_mb(pid), 2)
    idle = await wait_for(lambda: metric(admin, "vkit_gateway_in_flight_requests") == 0, 30)
    await asyncio.sleep(1.0)  # the tight key's rpm refills (it allows 2 of these)
    slots = {}
    for key, kind in (("soak", "slow"), ("tight", "slow-tight")):
        limit = CONCURRENCY[key]
        full = await traffic.at_once(kind, limit)
        over = await traffic.at_once(kind, limit + 1) if key == "soak" else None
        slots[key] = {"limit": limit, "at_limit": dict(full), "over_limit": dict(over or {})}
    leaked = any(s["at_limit"] != {200: s["limit"]} for s in slots.values())
    over_soak = slots["soak"]["over_limit"]
    enforced = over_soak.get(429, 0) >= 1 and over_soak.get(200, 0) == CONCURRENCY["soak"]
    warm = warm_rss if warm_rss is not None else samples[0][1]
    growth = (final_rss - warm) / warm * 100
    return {
        "seconds": round(elapsed, 1),
        "requests": traffic.sent,
        "requests_per_s": round(traffic.sent / elapsed, 1),
        "statuses": dict(sorted(traffic.statuses.items())),
        "gateway_counted": totals(admin, "vkit_gateway_requests_total", "status"),
        "upstream_errors": totals(admin, "vkit_gateway_upstream_errors_total", "kind"),
        "rss_mb": {"after_warmup": warm, "final": final_rss, "max": max(r for _, r in samples)},
        "rss_growth_pct": round(growth, 2),
        "in_flight_back_to_zero": idle,
        "key_slots": slots,
        "limiter_counts_back_to_zero": not leaked and enforced,
        "rss_samples": samples,
        "ok": growth < args.max_growth and idle and not leaked and enforced,
    }


@contextmanager
def stand_in_and_gateway(work: Path, keys: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """The stand-in upstream on CPU 0 and one ``vkit gateway`` serving ``keys`` on CPU 1
    (``env``: more of its settings), logs in ``work``; the gateway's URL and pid once ready."""
    upstream_port, port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    stand_in = [sys.executable, str(ROOT / "bench" / "upstream.py")]
    stand_in += ["--port", str(upstream_port), "--model", MODEL]
    gateway_env = {
        "VKIT_GATEWAY_UPSTREAMS": upstream,
        "VKIT_GATEWAY_KEYS_FILE": str(keys),
        "VKIT_GATEWAY_LOG_LEVEL": "error",
        **env,
    }
    gateway = [sys.executable, "-m", "vkit", "gateway", "--port", str(port)]
    with process(stand_in, 0, work / "upstream.log"):
        wait_http(f"{upstream}/health", 10)
        with process(gateway, 1, work / "gateway.log", gateway_env) as pid:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/readyz", 30)
            yield url, pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds, at most")
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="requests, at most")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS counts")
    parser.add_argument("--sample-every", type=float, default=10.0, help="RSS sampling, s")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vkit-soak-") as tmp:
        work = Path(tmp)
        keys = work / "keys.yaml"
        secrets = {
            "soak": add_key(keys, "soak", concurrency=CONCURRENCY["soak"], **BIG),
            "tight": add_key(keys, "tight", rpm=120, tpm=1_000_000, concurrency=2),
        }
        admin_port = free_port()
        admin_env = {"VKIT_GATEWAY_ADMIN_PORT": str(admin_port)}
        with stand_in_and_gateway(work, keys, admin_env) as (url, pid):
            admin = f"http://127.0.0.1:{admin_port}"
            traffic = Traffic(url, secrets)
            result = asyncio.run(soak(args, url, admin, pid, traffic))
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
