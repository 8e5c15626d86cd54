"""One benchmark run: direct, through NGINX, the vkit gateway, SMG and LiteLLM.

The stand-in upstream and the load generator are pinned to CPU 0, the proxy under test to
CPU 1 (``taskset``). For each target: concurrency 1/16/64, streaming and not, for
``--duration`` seconds each (after a short warm-up); the proxy's CPU time per request comes
from its process tree's utime+stime in ``/proc``, its memory is the tree's RSS after the run.

    .venv/bin/python bench/run.py [--duration 3] [--targets direct,nginx,vkit,smg,litellm]
                                  [--vkit-env shipped|dev]

The gateway runs as the image installs it (``--vkit-env shipped``, the default: a venv of the
image's requirements and the kit, built once by ``bench/venvs.py``), or from the dev venv
(``dev``: this process's Python and path, with whatever vLLM's dependencies bring).

``--chunk-delay-ms 1`` has the stand-in write each stream chunk apart (a pause before each),
as vLLM writes each token: every proxy then reads and writes each event on its own.

Target ``vkit-ledger`` is the same gateway keeping the usage ledger (SQLite): compare
``--targets vkit,vkit-ledger --rounds 4`` for the ledger's cost per request.

Before/after a change, in one run: unpack the old code (``git archive HEAD | tar -x -C
/tmp/before``) and compare ``--targets vkit,baseline --baseline /tmp/before --rounds 4``
(A B B A A B B A: these shared VMs drift; report the spread, not one row).

LiteLLM and SMG (the SGLang project's Rust gateway, ``pip install smg``, with an API key on)
are installed into venvs of their own under ``.vkit/bench/`` on first use (skipped with a
message if that fails). Prints a Markdown table and writes JSON lines to
``.vkit/bench/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from statistics import median

from venvs import CACHE, ROOT, clean_env, shipped_python, tool_binary  # bench/venvs.py

from gateway.keyfile import add_key
from vkit.nginx_conf import render_nginx_conf
from vkit.stack.ports import free_port

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MODEL = "bench"


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    total = 0
    for member in tree(pid):
        with suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss_mb(pid: int) -> float:
    total = 0
    for member in tree(pid):
        with suppress(OSError):
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
    return total / 2**20


def wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError):
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")


@contextmanager
def process(
    argv: list[str],
    cpu: int,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    try:
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(url: str, concurrency: int, stream: bool, duration: float, api_key: str | None) -> dict:
    argv = [
        "taskset",
        "-c",
        "0",
        sys.executable,
        str(ROOT / "bench" / "loadgen.py"),
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
    ]
    argv += ["--stream"] if stream else []
    argv += ["--api-key", api_key] if api_key else []
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(
    name: str, url: str, pid: int | None, args: argparse.Namespace, api_key: str | None = None
) -> list[dict]:
    rows = []
    load(url, 4, False, 1.0, api_key)  # warm-up
    for stream in (False, True):
        for concurrency in args.concurrency:
            before = cpu_seconds(pid) if pid else 0.0
            row = load(url, concurrency, stream, args.duration, api_key)
            if pid and row["requests"]:
                row["cpu_ms_per_req"] = round(
                    (cpu_seconds(pid) - before) * 1000 / row["requests"], 3
                )
            row["target"] = name
            rows.append(row)
            print(
                f"  {name} stream={stream} c={concurrency}: {row['rps']} req/s "
                f"p50 {row['p50_ms']} ms, statuses {row['statuses']}",
                flush=True,
            )
    if pid:
        for row in rows:
            row["rss_mb"] = round(rss_mb(pid), 1)
    return rows


def run_nginx(upstream: str, work: Path, args: argparse.Namespace) -> list[dict]:
    if shutil.which("nginx") is None:
        print("nginx not installed: skipped")
        return []
    port = free_port()
    prefix = work / "nginx"
    prefix.mkdir(exist_ok=True)  # again in each round
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf([upstream], f"127.0.0.1:{port}"))
    argv = ["nginx", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")]
    with process(argv, 1, work / "nginx.log") as pid:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 10)
        return measure("nginx", f"http://127.0.0.1:{port}", pid, args)


def run_vkit(
    upstream: str,
    work: Path,
    args: argparse.Namespace,
    tree: Path | None = None,
    ledger: bool = False,
) -> list[dict]:
    """The gateway of this checkout, or (``tree``) of another source tree of vkit; with
    ``ledger``, keeping the usage ledger (SQLite beside the keys file); with
    ``--vkit-env shipped``, in the image's environment (``tree``'s packages first there)."""
    keys = work / "keys.yaml"
    keys.unlink(missing_ok=True)
    secret = add_key(keys, "bench", rpm=100_000_000, tpm=1_000_000_000, concurrency=1000)
    port = free_port()
    env = {
        "VKIT_GATEWAY_UPSTREAMS": upstream,
        "VKIT_GATEWAY_KEYS_FILE": str(keys),
        "VKIT_GATEWAY_LOG_LEVEL": "warning",
    }
    python, cwd = Path(sys.executable), tree
    if args.vkit_env == "shipped":
        python = args.shipped_python
        env = {**clean_env(), **env, "PYTHONPATH": ""}
        cwd = tree or work  # not the checkout: `python -m` puts the working directory first
    if tree is not None:  # `python -m vkit` from that tree: its packages come first
        env["PYTHONPATH"] = str(tree)
    if ledger:
        (work / "usage.sqlite3").unlink(missing_ok=True)
        env["VKIT_GATEWAY_LEDGER__ENABLED"] = "true"
    argv = [str(python), "-m", "vkit", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    name = "vkit-ledger" if ledger else "vkit" if tree is None else "baseline"
    with process(argv, 1, work / f"{name}.log", env, cwd=cwd) as pid:
        wait_http(f"http://127.0.0.1:{port}/readyz", 30)
        return measure(name, f"http://127.0.0.1:{port}", pid, args, secret)


def run_baseline(upstream: str, work: Path, args: argparse.Namespace) -> list[dict]:
    if args.baseline is None:
        print("baseline: no --baseline DIR given: skipped")
        return []
    return run_vkit(upstream, work, args, tree=args.baseline)


def run_litellm(upstream: str, work: Path, args: argparse.Namespace) -> list[dict]:
    binary = tool_binary("litellm", "litellm[proxy]", "litellm")
    if binary is None:
        return []
    config = work / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": f"{upstream}/v1",
                            "api_key": "none",
                        },
                    }
                ]
            }
        )
    )
    port = free_port()
    master_key = "sk-" + secrets.token_hex(16)  # LiteLLM refuses to start without one
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": master_key,
    }
    argv = [str(binary), "--config", str(config), "--port", str(port), "--num_workers", "1"]
    with process(argv, 1, work / "litellm.log", env) as pid:
        try:
            wait_http(f"http://127.0.0.1:{port}/health/liveliness", 120)
        except RuntimeError as exc:
            shutil.copy(work / "litellm.log", CACHE / "litellm.log")
            print(f"LiteLLM did not start ({exc}); see {CACHE / 'litellm.log'}: skipped")
            return []
        return measure("litellm", f"http://127.0.0.1:{port}", pid, args, master_key)


def run_smg(upstream: str, work: Path, args: argparse.Namespace) -> list[dict]:
    """SMG (``pip install smg``): one worker, the API key on, logs at warn, its Prometheus
    listener on a free port. It is multi-threaded; pinned to the proxy's one CPU like the rest."""
    binary = tool_binary("smg", "smg", "smg")
    if binary is None:
        return []
    port, api_key = free_port(), "sk-" + secrets.token_hex(16)
    argv = [str(binary), "launch", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--worker-urls", upstream, "--api-key", api_key, "--log-level", "warn"]
    argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    with process(argv, 1, work / "smg.log") as pid:
        try:
            wait_http(f"http://127.0.0.1:{port}/v1/models", 60, _bearer(api_key))
        except RuntimeError as exc:
            shutil.copy(work / "smg.log", CACHE / "smg.log")
            print(f"SMG did not start ({exc}); see {CACHE / 'smg.log'}: skipped")
            return []
        return measure("smg", f"http://127.0.0.1:{port}", pid, args, api_key)


def _bearer(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"}


def print_table(rows: list[dict]) -> None:
    print(
        "\n| target | round | stream | conc | req/s | p50 ms | p99 ms | TTFT p50 ms | CPU ms/req "
        "| RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['round']} | {'yes' if r['stream'] else 'no'} | "
            f"{r['concurrency']} | "
            f"{r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['ttft_p50_ms'] or '-'} | "
            f"{r.get('cpu_ms_per_req', '-')} | {r.get('rss_mb', '-')} |"
        )


def print_summary(rows: list[dict]) -> None:
    """Per target and cell over the rounds: the median, and the spread (min-max) of CPU."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["target"], r["stream"], r["concurrency"]), []).append(r)
    print(
        "\n| target | stream | conc | rounds | req/s | p50 ms | p99/p50 | CPU ms/req median "
        "(min-max) | RSS MB max |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (target, stream, conc), group in cells.items():
        cpu = sorted(r["cpu_ms_per_req"] for r in group if "cpu_ms_per_req" in r)
        ratio = median([r["p99_ms"] / r["p50_ms"] for r in group if r["p50_ms"]] or [0])
        spread = f"{median(cpu):.3f} ({cpu[0]:.3f}-{cpu[-1]:.3f})" if cpu else "-"
        rss = max((r["rss_mb"] for r in group if "rss_mb" in r), default="-")
        print(
            f"| {target} | {'yes' if stream else 'no'} | {conc} | {len(group)} | "
            f"{median(r['rps'] for r in group):.0f} | {median(r['p50_ms'] for r in group):.3f} | "
            f"{ratio:.1f} | {spread} | {rss} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--targets", default="direct,nginx,vkit,smg,litellm")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 16, 64],
        help="comma-separated (default 1,16,64)",
    )
    parser.add_argument(
        "--vkit-env",
        choices=("shipped", "dev"),
        default="shipped",
        help="the gateway as the image installs it (default), or from this dev venv",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another vkit source tree for target 'baseline' (e.g. `git archive HEAD`, "
        "unpacked), to compare gateways in one run",
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="the stand-in's pause before each stream chunk: 0 (default) writes a stream at "
        "once; > 0 writes each chunk apart, as vLLM sends each token",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the targets, reversing their order every other round (A B, B A, ...)",
    )
    args = parser.parse_args()
    targets = args.targets.split(",")
    CACHE.mkdir(parents=True, exist_ok=True)
    args.shipped_python = None
    if args.vkit_env == "shipped" and {"vkit", "baseline"} & set(targets):
        args.shipped_python = shipped_python()
        if args.shipped_python is None:
            sys.exit(
                "the image's environment could not be built; --vkit-env dev measures the dev venv"
            )
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vkit-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        argv = [
            sys.executable,
            str(ROOT / "bench" / "upstream.py"),
            "--port",
            str(port),
            "--model",
            MODEL,
            "--chunk-delay-ms",
            str(args.chunk_delay_ms),
        ]
        with process(argv, 0, work / "upstream.log"):
            wait_http(f"{upstream}/health", 10)
            runners = {
                "direct": lambda upstream, work, args: measure("direct", upstream, None, args),
                "nginx": run_nginx,
                "vkit": run_vkit,
                "vkit-ledger": lambda upstream, work, args: run_vkit(
                    upstream, work, args, ledger=True
                ),
                "baseline": run_baseline,
                "smg": run_smg,
                "litellm": run_litellm,
            }
            chosen = [name for name in runners if name in targets]
            for round_number in range(1, args.rounds + 1):
                order = chosen if round_number % 2 else chosen[::-1]
                for name in order:
                    print(f"{name} (round {round_number})...", flush=True)
                    for row in runners[name](upstream, work, args):
                        rows.append({**row, "round": round_number})
    with (CACHE / "results.jsonl").open("a") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    print_table(rows)
    if args.rounds > 1:
        print_summary(rows)


if __name__ == "__main__":
    main()
