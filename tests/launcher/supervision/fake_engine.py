"""A stand-in for the vLLM server in supervisor tests: ``python fake_engine.py MODE --flags``.

Modes:
  too-long   fail with vLLM's "estimated maximum model length is 1024" while
             --max-model-len > 1024, then exit 0
  busy-gpu   fail with vLLM's free-memory error while --gpu-memory-utilization > 0.5
  crash      print a traceback-like line and exit 3
  serve      print "ready" and sleep until SIGTERM, then print "drained" and exit 0
  too-long-then-serve   fail as too-long while --max-model-len > 1024, then serve
"""

from __future__ import annotations

import signal
import sys
import time


def _flag(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


def main(argv: list[str]) -> int:
    mode = argv[0]
    print("fake engine argv: " + " ".join(argv[1:]), flush=True)
    if (
        mode in ("too-long", "too-long-then-serve")
        and int(_flag(argv, "--max-model-len", "4096")) > 1024
    ):
        print(
            "ValueError: To serve at least one request with the models's max seq len "
            "(4096), (1.00 GiB KV cache is needed, which is larger than the available KV "
            "cache memory (0.25 GiB). Based on the available memory, the estimated maximum "
            "model length is 1024. Try increasing `gpu_memory_utilization`.",
            flush=True,
        )
        return 1
    if mode == "busy-gpu" and float(_flag(argv, "--gpu-memory-utilization", "0.92")) > 0.5:
        print(
            "ValueError: Free memory on device cuda:0 (12.0/24.0 GiB) on startup is less "
            "than desired GPU memory utilization (0.92, 22.08 GiB).",
            flush=True,
        )
        return 1
    if mode == "crash":
        print("RuntimeError: something else broke", flush=True)
        return 3
    if mode in ("serve", "too-long-then-serve"):
        signal.signal(signal.SIGTERM, lambda *_: (print("drained", flush=True), sys.exit(0)))
        print("ready", flush=True)
        for _ in range(600):
            time.sleep(0.1)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
