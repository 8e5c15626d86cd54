"""One gateway per SQLite ledger: a second one on the same file is refused at start, in one
line, and the file is free again once the first stops (however it stops)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.keyfile import add_key
from gateway.ledger import LedgerError
from tests.gateway.ledger_stores import a_ledger


async def test_a_second_gateway_on_one_sqlite_file_is_refused_until_the_first_stops(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    first = a_ledger(url)
    second = a_ledger(url, started=False)
    with pytest.raises(LedgerError) as refused:
        second.start()
    (line,) = str(refused.value).splitlines()
    assert line == (
        f"the ledger at {tmp_path / 'usage.sqlite3'} is kept by another gateway "
        f"(pid {os.getpid()} on {os.uname().nodename}): SQLite serves one gateway; several "
        "share a PostgreSQL database (ledger.url: postgresql://...)"
    )
    await first.close()
    assert second.start() >= 1  # free again
    await second.close()


def test_a_folder_the_gateway_cannot_write_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "usage.sqlite3"
    with pytest.raises(LedgerError) as refused:
        a_ledger(f"sqlite:///{missing}")
    assert str(refused.value).startswith(f"cannot open the ledger at {missing}: ")


@pytest.mark.integration
def test_a_second_gateway_process_on_the_file_exits_1_in_one_line(tmp_path: Path) -> None:
    """A real ``vkit gateway`` process, while another process keeps the file (the kernel
    lock is per process, as two pods' or two hosts' gateways would hold it)."""
    database = tmp_path / "usage.sqlite3"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from gateway.ledger.owner import claim_sqlite; "
            "claim = claim_sqlite(pathlib.Path(sys.argv[1])); print('held', flush=True); "
            "sys.stdin.read()",
            str(database),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        keys = tmp_path / "keys.yaml"
        add_key(keys, "alice")
        env = {
            **os.environ,
            "VKIT_GATEWAY_KEYS_FILE": str(keys),
            "VKIT_GATEWAY_LEDGER__ENABLED": "true",
            "VKIT_GATEWAY_UPSTREAMS": '["http://127.0.0.1:9"]',
        }
        second = [sys.executable, "-m", "vkit", "gateway"]
        done = subprocess.run(second, env=env, capture_output=True, text=True, timeout=30)
    finally:
        holder.kill()
        holder.communicate()
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "vkit gateway: error:" in line]
    assert len(lines) == 1 and f"pid {holder.pid} on " in lines[0], done.stderr
    assert "SQLite serves one gateway" in lines[0]
