"""What the ASGI server and the framework cost, measured apart from the gateway's own work.

One run, as ``bench/run.py`` measures (stand-in upstream and load on CPU 0, the proxy on
CPU 1, CPU ms per request from ``/proc``), of ``bench/minimal_proxy.py``'s proxies, which
do nothing but relay (no key, no limits, no metrics), beside the gateway as shipped and SMG:

- ``raw``: a byte pass-through on asyncio protocols and httptools (the floor of Python);
- ``uvicorn``: the minimal ASGI app on uvicorn with uvloop and httptools (the gateway's server);
- ``granian-asgi`` / ``granian-rsgi``: the same app on granian 2 (a Rust HTTP server), through
  its ASGI interface and its own RSGI one, one worker, one runtime thread, uvloop;
- ``vkit``, ``smg``: as in ``bench/run.py``.

``raw`` and ``uvicorn`` run in the image's environment (``bench/venvs.py``); granian is
installed into a venv of its own under ``.vkit/bench/`` on first use (with aiohttp, which the
gateway's client module imports). docs/gateway-cost.md#servers-and-frameworks has a run.

    .venv/bin/python bench/servers.py [--targets raw,uvicorn,granian-asgi,granian-rsgi,vkit,smg]
                                      [--rounds 2] [--duration 2] [--concurrency 1,16,64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from run import measure, print_summary, process, run_smg, run_vkit, wait_http  # bench/run.py
from venvs import CACHE, ROOT, _new_venv, _pip, clean_env, shipped_python  # bench/venvs.py

from vkit.stack.ports import free_port

BENCH = ROOT / "bench"


def granian_python() -> Path | None:
    """A venv with granian (and what the minimal app imports), built once."""
    venv = CACHE / "granian-venv"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    print("installing granian into its own venv (once)...", flush=True)
    try:
        _new_venv(venv)
        _pip(venv, ["granian[uvloop]", "httptools", "aiohttp"], CACHE / "granian-install.log")
    except Exception as exc:
        print(f"granian could not be installed ({exc}): skipped")
        return None
    return python


def argv_of(name: str, port: int, shipped: Path, granian: Path | None) -> list[str] | None:
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    if name == "raw":
        return [str(shipped), str(BENCH / "minimal_proxy.py"), "--raw", str(port)]
    if name == "uvicorn":
        return [
            *(str(shipped), "-m", "uvicorn", "minimal_proxy:app", "--loop", "uvloop"),
            *("--http", "httptools", "--no-access-log", "--log-level", "warning", *listen),
        ]
    if granian is None:
        return None
    interface = name.removeprefix("granian-")
    return [
        *(str(granian), "-m", "granian", "--interface", interface, "--loop", "uvloop"),
        *("--workers", "1", "--runtime-threads", "1", "--no-ws", "--log-level", "warning"),
        *listen,
        "minimal_proxy:app" if interface == "asgi" else "minimal_proxy:rsgi",
    ]


def run_minimal(
    name: str, upstream: str, work: Path, args: argparse.Namespace, granian: Path | None
) -> list[dict]:
    port = free_port()
    argv = argv_of(name, port, args.shipped_python, granian)
    if argv is None:
        return []
    env = {**clean_env(), "PYTHONPATH": f"{BENCH}:{ROOT}", "VKIT_BENCH_UPSTREAM": upstream}
    with process(argv, 1, work / f"{name}.log", env, cwd=work) as pid:
        wait_http(f"http://127.0.0.1:{port}/ready", 30)
        return measure(name, f"http://127.0.0.1:{port}", pid, args, "unused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="raw,uvicorn,granian-asgi,granian-rsgi,vkit,smg")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument(
        "--concurrency", type=lambda t: [int(c) for c in t.split(",")], default=[1, 16, 64]
    )
    args = parser.parse_args()
    args.vkit_env, args.baseline = "shipped", None
    CACHE.mkdir(parents=True, exist_ok=True)
    args.shipped_python = shipped_python()
    if args.shipped_python is None:
        sys.exit("the image's environment could not be built")
    targets = args.targets.split(",")
    granian = granian_python() if any(t.startswith("granian") for t in targets) else None
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vkit-servers-") as tmp:
        work = Path(tmp)
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
        with process([*argv, "--model", "bench"], 0, work / "upstream.log"):
            wait_http(f"{upstream}/health", 10)
            for round_number in range(1, args.rounds + 1):
                for name in targets if round_number % 2 else targets[::-1]:
                    print(f"{name} (round {round_number})...", flush=True)
                    if name == "vkit":
                        got = run_vkit(upstream, work, args)
                    elif name == "smg":
                        got = run_smg(upstream, work, args)
                    else:
                        got = run_minimal(name, upstream, work, args, granian)
                    rows += [{**row, "round": round_number} for row in got]
    print_summary(rows)


if __name__ == "__main__":
    main()
