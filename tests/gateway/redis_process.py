"""A real ``redis-server`` on a free port, for the Redis limiter's tests (tier ``integration``).

Outages a test causes, each bounded by the test: :meth:`RedisProcess.stop` then
:meth:`~RedisProcess.start` (a restart: empty, unless ``persistent``, whose append-only file
brings the data back), or :meth:`~RedisProcess.pause` then :meth:`~RedisProcess.resume` (the
process frozen by SIGSTOP: connections open, commands unanswered, data kept).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from vkit.stack.ports import free_port


class RedisProcess:
    """``redis-server --port P --save '' --appendonly no``; ``start()`` again reuses the port.
    ``persistent``: ``--appendonly yes --appendfsync always``, so a restart keeps the data."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--dir", str(self.workdir)]
        if self.persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts no command until :meth:`resume`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server dies at once too
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def running_redis(workdir: Path, persistent: bool = False) -> Iterator[RedisProcess]:
    """A started :class:`RedisProcess`, stopped on the way out."""
    process = RedisProcess(workdir, persistent)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.asynccontextmanager
async def redis_clients(server: RedisProcess, count: int) -> AsyncIterator[list[Any]]:
    """``count`` clients of ``server`` (one per gateway process they stand for), closed after."""
    made = [redis.asyncio.from_url(server.url) for _ in range(count)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()
