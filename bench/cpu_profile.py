"""Profile the vkit gateway under load: where its CPU goes at a given concurrency.

The stand-in upstream and the load generator run on CPU 0, the gateway on CPU 1, as in
``bench/run.py``. ``py-spy record`` samples the gateway while ``bench/loadgen.py`` drives it;
the collapsed stacks are summed into the functions with the most *own* samples and the
most *inclusive* samples, printed as two short tables. py-spy is a dev tool, not a
dependency: ``.venv/bin/pip install py-spy``. py-spy samples wall time while the process is
running or runnable: on a busy machine compare tables of one run, and take CPU figures
from ``bench/run.py``.

    .venv/bin/python bench/cpu_profile.py --concurrency 16,64 [--duration 8] [--stream]
        [--chunk-delay-ms 1] [--top 25]

Writes each run's collapsed stacks to ``.vkit/bench/profile-c<N>[-stream].txt`` (feed them
to any flame-graph viewer) and prints the gateway's CPU ms per request beside the tables.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from run import CACHE, MODEL, ROOT, cpu_seconds, load, process, wait_http  # bench/run.py

from gateway.keyfile import add_key
from vkit.stack.ports import free_port


def summarise(collapsed: Path, top: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(own, inclusive) sample counts per function from py-spy's ``--format raw`` output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return own.most_common(top), inclusive.most_common(top)


def _short(frame: str) -> str:
    """``function (path/to/module.py:LINE)`` -> ``function (module.py)``."""
    name, _, where = frame.partition(" (")
    module = where.rstrip(")").rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({module})"


def profile_one(
    url: str, pid: int, concurrency: int, args: argparse.Namespace, secret: str
) -> None:
    suffix = f"c{concurrency}" + ("-stream" if args.stream else "")
    collapsed = CACHE / f"profile-{suffix}.txt"
    spy = [
        args.py_spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        "--duration",
        str(int(args.duration)),
        "--format",
        "raw",
        "--output",
        str(collapsed),
        "--nonblocking",
    ]
    before = cpu_seconds(pid)
    recorder = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    row: dict = {}
    loader = threading.Thread(
        target=lambda: row.update(load(url, concurrency, args.stream, args.duration, secret))
    )
    loader.start()
    loader.join()
    recorder.wait(timeout=args.duration + 30)
    cpu_ms = (cpu_seconds(pid) - before) * 1000 / max(row.get("requests", 0), 1)
    print(
        f"\n## c={concurrency} stream={args.stream}: {row.get('rps')} req/s, "
        f"p50 {row.get('p50_ms')} ms, p99 {row.get('p99_ms')} ms, "
        f"CPU {cpu_ms:.3f} ms/req (includes py-spy's sampling), stacks in {collapsed}"
    )
    if not collapsed.exists():
        print("py-spy wrote nothing:", recorder.stderr.read().decode() if recorder.stderr else "")
        return
    own, inclusive = summarise(collapsed, args.top)
    print("\n| own samples | function |\n|---|---|")
    for name, count in own:
        print(f"| {count} | {name} |")
    print("\n| inclusive samples | function |\n|---|---|")
    for name, count in inclusive:
        print(f"| {count} | {name} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="16,64", help="comma-separated")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per profile")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="the stand-in's pause before each stream chunk (bench/run.py's option)",
    )
    parser.add_argument("--top", type=int, default=25)
    default_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    parser.add_argument("--py-spy", default=default_spy)
    args = parser.parse_args()
    if not Path(args.py_spy).exists():
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vkit-profile-") as tmp:
        work = Path(tmp)
        upstream_port, port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        argv = [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(upstream_port)]
        argv += ["--chunk-delay-ms", str(args.chunk_delay_ms)]
        keys = work / "keys.yaml"
        secret = add_key(keys, "bench", rpm=100_000_000, tpm=1_000_000_000, concurrency=1000)
        env = {
            "VKIT_GATEWAY_UPSTREAMS": upstream,
            "VKIT_GATEWAY_KEYS_FILE": str(keys),
            "VKIT_GATEWAY_LOG_LEVEL": "warning",
        }
        gateway = [sys.executable, "-m", "vkit", "gateway", "--port", str(port)]
        with process([*argv, "--model", MODEL], 0, work / "upstream.log"):
            wait_http(f"{upstream}/health", 10)
            with process(gateway, 1, work / "vkit.log", env) as pid:
                url = f"http://127.0.0.1:{port}"
                wait_http(f"{url}/livez", 30)
                load(url, 4, args.stream, 1.0, secret)  # warm-up
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    profile_one(url, pid, concurrency, args, secret)


if __name__ == "__main__":
    main()
