"""API keys at request time: :class:`KeyStore` authenticates secrets against the keys file.

The store hashes the presented secret with SHA-256 and compares it with every stored digest
using :func:`hmac.compare_digest` (no early exit). It re-reads the file when its mtime, size
or inode changes, checking at most once per ``check_interval`` seconds of the injected
clock; a broken edit keeps the last good keys and is logged once. Secrets are never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.keyfile import ApiKey, KeyFileError, digest_secret, load_keys

log = logging.getLogger(__name__)


_Signature = tuple[int, int, int]
_MISSING: _Signature = (-1, -1, -1)


class KeyStore:
    """The keys of one file, reloaded when it changes. A broken file at start raises
    :class:`~gateway.keyfile.KeyFileError`; a broken edit later keeps the last good keys."""

    def __init__(self, path: Path, clock: Callable[[], float], check_interval: float = 1.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._check_interval = check_interval
        self._signature = self._stat()
        self._keys: tuple[ApiKey, ...] = tuple(load_keys(self.path))
        self._checked_at = clock()
        self._failed_signature: _Signature | None = None

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        self.refresh()
        return self._keys

    def authenticate(self, secret: str) -> ApiKey | None:
        """The enabled key whose digest matches ``secret``, else ``None``."""
        self.refresh()
        presented = digest_secret(secret)
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(presented, key.sha256):
                found = key
        return found if found is not None and found.enabled else None

    def refresh(self) -> None:
        """Reload if the file changed; at most once per ``check_interval``."""
        now = self._clock()
        if now - self._checked_at < self._check_interval:
            return
        self._checked_at = now
        try:
            signature = self._stat()
        except OSError as exc:
            self._report(_MISSING, f"{self.path}: cannot stat: {exc.strerror or exc}")
            return
        if signature in (self._signature, self._failed_signature):
            return
        try:
            keys = load_keys(self.path)
        except KeyFileError as exc:
            self._report(signature, str(exc))
            return
        self._keys, self._signature, self._failed_signature = tuple(keys), signature, None
        log.info("reloaded %d API keys from %s", len(keys), self.path)

    def _report(self, signature: _Signature, message: str) -> None:
        if self._failed_signature != signature:
            log.error("keeping the last good API keys: %s", message)
        self._failed_signature = signature

    def _stat(self) -> _Signature:
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)
