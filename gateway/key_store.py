"""API keys at request time: :class:`KeyStore` authenticates secrets against the keys file.

The store hashes the presented secret with SHA-256 and finds the key by that digest in a
dict (one lookup, whatever the number of keys), then compares the two with
:func:`hmac.compare_digest`. What a lookup's timing could tell is about the SHA-256 digests
of the secrets tried, which says nothing of a stored secret: the comparison of secrets never
exits early. Secrets are never logged.

Reloading never happens on a request's path: :meth:`KeyStore.run_forever` (a task of the
app's lifespan) calls :meth:`KeyStore.refresh` every ``check_interval`` seconds, which stats,
reads and parses the file in a worker thread and swaps the key set in the event loop.

A changed file (mtime, size or inode) is loaded only once it has *settled*: the same
signature seen again at least ``settle_time`` seconds later, and unchanged while it was
read, so a writer still at work (``cat new > keys.yaml``) is waited for. A file *rewritten
in place* (its inode is the one served: truncated and written again, not a new file renamed
over it) must stay unchanged for ``in_place_settle`` seconds instead: such a writer may
pause mid-file for longer than ``settle_time`` (a script writing key by key), and what it
has written so far is a valid file with only the first keys (the others would get 401) and
the last one perhaps cut before its limits. A file replaced whole (``vkit keys``, ``sed
-i``, most editors, configuration managers, Kubernetes' mounted Secrets) is loaded after
``settle_time``; an in-place writer that pauses longer than ``in_place_settle`` still gets
its half loaded (``docs/gateway-keys.md#reloading-the-keys-file``). A settled file is
still refused -- the last good keys kept, a WARNING with both counts logged once per file
version, ``vkit_gateway_keys_reload_refused_total{reason}`` counted -- when it:

- cannot be read (``unreadable``) or parsed and validated (``invalid``);
- holds no keys (``empty``: empty, comment-only, ``keys: []``): revoking every key at once is
  done by disabling them (``vkit keys disable``), never by an empty file;
- does not end with a newline (``truncated``): a file cut mid-way by a writer that stopped
  can still be valid YAML with fewer keys, but it ends mid-line; every writer of keys files
  (``vkit keys``, editors, ``yaml.safe_dump``) ends the file with one.

A valid file that drops more than half of the keys is loaded (revoking keys must work) with
a WARNING. ``vkit_gateway_keys_loaded`` is the size of the set being served.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.keyfile import ApiKey, KeyFileError, digest_secret, parse_keys
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


_Signature = tuple[int, int, int]
_MISSING: _Signature = (-1, -1, -1)


@dataclass(frozen=True, slots=True)
class _Read:
    """One version of the file as a worker thread found it."""

    signature: _Signature  # after reading: a different one means it changed meanwhile
    keys: tuple[ApiKey, ...] = ()
    refusal: str | None = None  # the reason word, when the version is not to be loaded
    problem: str = ""


def _stat(path: Path) -> _Signature:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _signature_or_missing(path: Path) -> _Signature:
    try:
        return _stat(path)
    except OSError:
        return _MISSING


def _read(path: Path) -> _Read:
    """Read, parse and judge the file (in a worker thread)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return _Read(_signature_or_missing(path), refusal="unreadable", problem=reason)
    signature = _signature_or_missing(path)
    try:
        keys = tuple(parse_keys(text, str(path)))
    except KeyFileError as exc:
        return _Read(signature, refusal="invalid", problem=str(exc))
    if not keys:
        return _Read(signature, refusal="empty", problem=f"{path} has no keys")
    if not text.endswith("\n"):
        problem = f"{path} does not end with a newline: it looks cut off mid-write"
        return _Read(signature, keys, refusal="truncated", problem=problem)
    return _Read(signature, keys)


class KeyStore:
    """The keys of one file, reloaded in the background when it changes. A broken file at
    start raises :class:`~gateway.keyfile.KeyFileError`; a broken edit later keeps the last
    good keys."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float],
        check_interval: float = 1.0,
        settle_time: float = 1.0,
        metrics: GatewayMetrics | None = None,
        in_place_settle: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._check_interval = check_interval
        self._settle_time = settle_time
        self._in_place_settle = in_place_settle
        self._metrics = metrics
        self._signature = _signature_or_missing(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        self._keys: tuple[ApiKey, ...] = ()
        self._by_digest: dict[str, ApiKey] = {}
        self._use(tuple(parse_keys(text, str(self.path))))
        self._pending: tuple[_Signature, float] | None = None  # a change waiting to settle
        self._refused_signature: _Signature | None = None

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return self._keys

    def named(self, name: str) -> ApiKey | None:
        """The key called ``name`` (a scan: asked only off the request's usual path)."""
        for key in self._keys:
            if key.name == name:
                return key
        return None

    def authenticate(self, secret: str) -> ApiKey | None:
        """The enabled key whose digest matches ``secret``, else ``None``. No I/O."""
        presented = digest_secret(secret)
        found = self._by_digest.get(presented)
        if found is None or not hmac.compare_digest(presented, found.sha256):
            return None
        return found if found.enabled else None

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval)
            await self.refresh()

    async def refresh(self) -> None:
        """One check: load the file if it changed and settled, else keep the current keys."""
        signature = await asyncio.to_thread(_signature_or_missing, self.path)
        if signature in (self._signature, self._refused_signature):
            self._pending = None
            return
        now = self._clock()
        if self._pending is None or self._pending[0] != signature:
            self._pending = (signature, now)
        in_place = self._in_place(signature)
        if now - self._pending[1] < (self._in_place_settle if in_place else self._settle_time):
            return  # changed moments ago: the writer may not be done
        if signature == _MISSING:
            self._refuse(signature, "unreadable", f"{self.path}: cannot stat")
            return
        read = await asyncio.to_thread(_read, self.path)
        if read.signature != signature:
            self._pending = (read.signature, now)  # changed while being read: wait again
            return
        self._pending = None
        if read.refusal is not None:
            self._refuse(signature, read.refusal, read.problem)
            return
        before = len(self._keys)
        self._signature, self._refused_signature = signature, None
        self._use(read.keys)
        if len(read.keys) * 2 < before:
            log.warning(
                "reloaded %s with %d API keys, fewer than half of the %d before",
                self.path,
                len(read.keys),
                before,
            )
        else:
            log.info("reloaded %d API keys from %s (%d before)", len(read.keys), self.path, before)
        if in_place:
            log.info(
                "%s was rewritten in place, so it was loaded only after %g s unchanged; "
                "write a new file and rename it over the old one to have it loaded in %g s",
                self.path,
                self._in_place_settle,
                self._settle_time,
            )

    def _in_place(self, signature: _Signature) -> bool:
        """Whether the file at ``signature`` is the one served (or last refused), changed
        in place: the same inode."""
        inode = signature[2]
        refused = self._refused_signature
        return inode == self._signature[2] or (refused is not None and inode == refused[2])

    def _use(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = keys
        self._by_digest = {key.sha256: key for key in keys}  # digests are unique (keyfile)
        if self._metrics is not None:
            self._metrics.keys_loaded.set(len(keys))

    def _refuse(self, signature: _Signature, reason: str, problem: str) -> None:
        if self._refused_signature == signature:
            return
        self._refused_signature = signature
        if self._metrics is not None:
            self._metrics.keys_reload_refused.labels(reason).inc()
        log.warning(
            "keys file not reloaded (%s), keeping the %d keys loaded before: %s",
            reason,
            len(self._keys),
            problem,
        )
