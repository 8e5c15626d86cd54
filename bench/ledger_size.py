"""The usage ledger after a million requests: its rows, its file size, the request path's cost.

A month of traffic: ``--requests`` requests from ``--keys`` keys on ``--models`` models, spread
evenly over ``--days`` days, counted in the gateway's tally (:class:`gateway.ledger.UsageTally`,
what billing does per request) and written to a fresh SQLite ledger in hourly flushes, as the
gateway writes them. Prints the record cost per request, the rows, and the file's size.

    .venv/bin/python bench/ledger_size.py [--requests 1000000] [--keys 100] [--days 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gateway.ledger import UsageTally, open_store

START = 1_764_547_200  # 2025-12-01T00:00:00Z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    keys = [f"key-{i}" for i in range(args.keys)]
    models = [f"model-{i}" for i in range(args.models)]
    step = args.days * 86400 / args.requests
    with tempfile.TemporaryDirectory(prefix="vkit-ledger-") as tmp:
        path = Path(tmp) / "usage.sqlite3"
        store = open_store(f"sqlite:///{path}")
        store.migrate()
        tally = UsageTally()
        recording = writing = 0.0
        hour = START
        flushes = 0
        for i in range(args.requests):
            at = START + i * step
            began = time.perf_counter()
            key, model = keys[i % len(keys)], models[(i // len(keys)) % len(models)]
            tally.record(key, model, "", 500, 200, at)
            recording += time.perf_counter() - began
            if at >= hour + 3600:
                hour = int(at // 3600) * 3600
                began = time.perf_counter()
                store.add(tally.take(), {m: 2.0 for m in models}, hour)
                writing += time.perf_counter() - began
                flushes += 1
        store.add(tally.take(), {}, hour)
        rows = len(store.usage(0, 2**40))
        store._transaction(lambda cur: cur.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        store.close()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    spread = f"{args.keys} keys x {args.models} models, {args.days} days"
    print(f"requests            {args.requests:,} ({spread})")
    print(f"record, per request {recording / args.requests * 1e6:.2f} us (the tally's dict update)")
    print(
        f"write, per flush    {writing / max(flushes, 1) * 1e3:.2f} ms ({flushes} hourly flushes)"
    )
    print(f"ledger rows         {rows:,}")
    print(f"ledger file         {size / 1e6:.1f} MB ({size / args.requests:.1f} bytes per request)")


if __name__ == "__main__":
    main()
