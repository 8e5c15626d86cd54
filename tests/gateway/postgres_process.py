"""A real PostgreSQL server in a throwaway cluster, for the ledger's tests (tier ``integration``).

``initdb`` then ``postgres`` on a free loopback port, trust authentication, data in a temporary
directory. PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres``
user (Debian's package creates it) and both programs run as that user. :meth:`stop` and
:meth:`start` make an outage (the data stays).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vkit.stack.ports import free_port


def _bin_dirs() -> list[Path]:
    """Debian's per-version folders (the package puts only wrappers on PATH), newest first."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    return [*versions, Path("/usr/local/bin")]


def _binary(name: str) -> str | None:
    for folder in _bin_dirs():
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    return shutil.which(name)


class PostgresProcess:
    def __init__(self, workdir: Path) -> None:
        initdb, postgres = _binary("initdb"), _binary("postgres")
        if initdb is None or postgres is None:
            pytest.skip("PostgreSQL (initdb, postgres) is not installed")
        self.initdb, self.postgres = initdb, postgres
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("as root, PostgreSQL needs a 'postgres' user to run as")
            self.user = "postgres"
            # pytest's own temporary folders are root's alone (0700): a folder of its own
            workdir = Path(tempfile.mkdtemp(prefix="vkit-postgres-"))
            shutil.chown(workdir, user="postgres")
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._run([self.initdb, "-D", str(self.data), "-U", "vkit", "--auth=trust", "-E", "UTF8"])

    @property
    def url(self) -> str:
        return f"postgresql://vkit@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, user=self.user)
        if done.returncode:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')}")

    def start(self, timeout: float = 20.0) -> None:
        argv = [self.postgres, "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1"]
        argv += ["-k", str(self.data), "-c", "fsync=off", "-c", "max_connections=50"]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self.user
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections on port {self.port}")

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # smart shutdown would wait for clients: fast is SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def running_postgres(workdir: Path) -> Iterator[PostgresProcess]:
    """A started :class:`PostgresProcess`, stopped on the way out."""
    process = PostgresProcess(workdir)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        if process.user is not None:
            shutil.rmtree(process.workdir, ignore_errors=True)


def fresh_database(server: PostgresProcess, name: str) -> str:
    """An empty database ``name`` on ``server`` (dropped first if it exists): its URL."""
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + f"/{name}"
