"""One gateway per SQLite ledger: :func:`claim_sqlite` holds an exclusive lock beside the file.

    claim = claim_sqlite(Path("/var/lib/vkit-gateway/usage.sqlite3"))  # LedgerError if taken
    ...
    claim.release()                                                   # or the process ends

SQLite keeps one gateway's ledger. Several gateways on one file would each hold a budget
book of their own, and a file on a volume shared by several hosts (a network file system,
several pods) is not safe for SQLite's own locking either (https://www.sqlite.org/faq.html#q5).
So the gateway that writes the file first takes ``flock(LOCK_EX)`` on ``FILE.gateway``
(not on the database file, whose locks are SQLite's), writes its pid and host there, and
keeps it until it stops; the kernel drops the lock when the process dies, however it dies. A
second gateway on the same file is refused at start with one line naming the first. Readers
(``vkit usage``, ``vkit keys budget``) never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gateway.ledger.store import LedgerError

OWNER_SUFFIX = ".gateway"


@dataclass
class SqliteClaim:
    """The lock this gateway holds on its SQLite ledger."""

    path: Path
    file: IO[str]

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def claim_sqlite(database: Path) -> SqliteClaim:
    """Take the SQLite ledger at ``database`` for this gateway, or raise :class:`LedgerError`
    (one line) when another gateway keeps it or the folder cannot be written."""
    path = database.with_name(database.name + OWNER_SUFFIX)
    try:
        file = open(path, "a+")  # noqa: SIM115 -- held until release()
    except OSError as exc:
        raise LedgerError(f"cannot open the ledger at {database}: {exc.strerror}: {path}") from exc
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        file.close()
        raise LedgerError(
            f"the ledger at {database} is kept by another gateway ({holder}): SQLite serves "
            "one gateway; several share a PostgreSQL database (ledger.url: postgresql://...)"
        ) from None
    file.truncate(0)
    file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    file.flush()
    return SqliteClaim(path, file)
