"""The README's first command as a newcomer meets it: ``make demo``, one request, Ctrl-C.

Runs ``make demo`` (bootstrap, install, ``vkit up``) in its own process group, waits for the
banner, sends one chat completion to the printed URL with the printed key, then sends SIGINT
to the group, as Ctrl-C in a terminal does, and checks that make and everything it started
are gone. Exit 0 only then. Standard library only: it runs before the venv exists.

    python3.11 .ci/demo_smoke.py [--timeout 2400] [-- make demo]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

BANNER_END = "Press Ctrl-C"


def children_of(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc: no psutil before the venv exists)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ask(url: str, key: str, model: str) -> dict[str, object]:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        reply: dict[str, object] = json.load(response)
    return reply


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds to the banner")
    parser.add_argument("command", nargs="*", default=["make", "demo"])
    args = parser.parse_args()

    started = time.monotonic()
    proc = subprocess.Popen(
        args.command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
        # Ctrl-C must reach the demo even when this runs as a background job (a shell without
        # job control starts those with SIGINT ignored, and an ignored signal is inherited).
        preexec_fn=_default_sigint,
    )
    lines: list[str] = []

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    spawned: set[int] = set()
    try:
        while not any(BANNER_END in line for line in lines):
            if proc.poll() is not None:
                print(f"demo smoke: {args.command} exited {proc.returncode} before the banner")
                return 1
            if time.monotonic() - started > args.timeout:
                print(f"demo smoke: no banner within {args.timeout:.0f} s")
                return 1
            time.sleep(1)
        banner_s = time.monotonic() - started
        text = "".join(lines)
        url, key, model = (
            re.search(rf"{label}:\s+(\S+)", text) for label in ("URL", "API key", "Model")
        )
        if not (url and key and model):
            print("demo smoke: the banner lacks the URL, API key or model")
            return 1
        sent = time.monotonic()
        try:
            reply = ask(url.group(1).removesuffix("/v1"), key.group(1), model.group(1))
        except OSError as exc:  # urllib's URLError and HTTPError included
            print(f"demo smoke: the request through the gateway failed: {exc}")
            return 1
        choices = reply.get("choices")
        content = choices[0]["message"]["content"] if isinstance(choices, list) else None
        if not isinstance(content, str):
            print(f"demo smoke: no reply text in {reply}")
            return 1
        asked_ms = (time.monotonic() - sent) * 1000
    finally:
        spawned = children_of(proc.pid)
        stopping = time.monotonic()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal's foreground group
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in spawned) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = sorted(pid for pid in spawned if alive(pid))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        reader.join(timeout=5)
    if left:
        print(f"demo smoke: Ctrl-C left processes running: {left}")
        return 1
    print(
        f"demo smoke: banner after {banner_s:.0f} s, reply {content!r} in {asked_ms:.0f} ms, "
        f"everything stopped {time.monotonic() - stopping:.1f} s after Ctrl-C"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
