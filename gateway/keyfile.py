"""The keys file: API keys as YAML, loaded with errors that name the line, saved atomically.

    keys:
      - name: alice
        sha256: 9f86d0...   # hex SHA-256 of the secret; the secret itself is never stored
        rpm: 60             # requests per minute (absent/null: unlimited)
        tpm: 60000          # tokens per minute (absent/null: unlimited)
        concurrency: 8      # requests in flight (absent/null: unlimited)
        max_tokens: 1024    # cap per request (absent/null: the gateway's global cap)
        max_n: 8            # fan-out bounds, each below the gateway's (absent/null: its own):
        max_best_of: 8      #   n, best_of, prompts in a batch, and completions per request
        max_prompts: 64     #   (prompts x max(n, best_of))
        max_completions: 64
        models: [tiny-llama]  # allowed models; empty: all
        priority: batch     # interactive (absent: the default) | batch | an integer (lower
                            #   first): vLLM's request priority and the gateway's hold order
        budgets:            # tokens and/or dollars per day, week, month, total (UTC windows)
          month: {tokens: 40000000, dollars: 250}
        spill: true         # may go to the spill-over endpoint when the replicas are full
        on_premises: false  # true: never leaves the replicas, whatever spill says
        enabled: true
        created: 2026-01-01T00:00:00Z

Only YAML is supported. Saving writes a temporary file in the same directory -- with the
old file's owner, group and mode (a new one: 0600, or 0640 for a given group) -- and
``os.replace``-s it over the old one, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.ledger.budgets import KeyBudgets
from gateway.priority_class import PriorityClass, class_value

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SECRET_PREFIX = "vk-"


def new_secret() -> str:
    """A fresh secret: ``vk-`` + 32 url-safe random bytes."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest_secret(secret: str) -> str:
    """What the file stores instead of the secret: its hex SHA-256."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyFileError(ValueError):
    """The keys file cannot be read, parsed or validated; the message names line and field."""


class KeyNameTaken(ValueError):
    """:func:`add_key` was asked for a name the file already has."""


class ApiKey(BaseModel):
    """One key: its name, the digest of its secret, and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", repr=False)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_n: int | None = Field(default=None, ge=1)
    max_best_of: int | None = Field(default=None, ge=1)
    max_prompts: int | None = Field(default=None, ge=1)
    max_completions: int | None = Field(default=None, ge=1)
    models: tuple[str, ...] = ()
    budgets: KeyBudgets | None = None  # gateway.ledger.budgets; kept with the ledger on
    priority: PriorityClass | None = None  # gateway.priority_class
    # gateway.spill (None: false, and not written): its requests may go to the remote
    # endpoint; on_premises: never sent off the premises, whatever spill says
    spill: bool | None = None
    on_premises: bool | None = None
    enabled: bool = True
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def scheduling_priority(self) -> int:
        """vLLM's ``priority`` for this key's class (:mod:`gateway.priority_class`)."""
        return class_value(self.priority)


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = []


def parse_keys(text: str, source: str = "keys file") -> list[ApiKey]:
    """Validate the YAML text; names and digests must be unique."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise KeyFileError(f"{source}{where}: not valid YAML: {problem}") from None
    try:
        keys = KeyFile.model_validate(raw if raw is not None else {}).keys
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = _line_of(node, loc)
        field = ".".join(str(part) for part in loc) or "top level"
        where = f" line {line}" if line else ""
        raise KeyFileError(f"{source}{where}: {field}: {err['msg']}") from None
    _check_unique(keys, source)
    return keys


def _check_unique(keys: list[ApiKey], source: str) -> None:
    names: set[str] = set()
    digests: set[str] = set()
    for key in keys:
        if key.name in names:
            raise KeyFileError(f"{source}: duplicate key name '{key.name}'")
        if key.sha256 in digests:
            raise KeyFileError(f"{source}: key '{key.name}' repeats another key's sha256")
        names.add(key.name)
        digests.add(key.sha256)


def _line_of(node: yaml.Node | None, loc: tuple[object, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
            if child is None:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def load_keys(path: Path) -> list[ApiKey]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_keys(text, str(path))


def dump_keys(keys: list[ApiKey]) -> str:
    data = {"keys": [key.model_dump(mode="json", exclude_none=True) for key in keys]}
    return yaml.safe_dump(data, sort_keys=False)


def save_keys(path: Path, keys: list[ApiKey], *, group: int | None = None) -> None:
    """Write atomically: temp file in the same directory, fsync, ``os.replace``.

    The new file keeps the owner, group and mode of the one it replaces, so that a file
    made readable for the gateway's service group (``root:vkit 0640``) stays so when root
    edits it. A new file is the writer's, mode 0600. ``group`` (a gid) gives the file that
    group and mode 0640: its owner writes, the group (the gateway's user) reads, nobody else.
    Keeping or setting an owner or group this process may not give is a ``PermissionError``.
    """
    text = dump_keys(keys)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        old = path.stat()
        mode, uid, gid = stat.S_IMODE(old.st_mode), old.st_uid, old.st_gid
    except FileNotFoundError:
        mode, uid, gid = 0o600, -1, -1  # -1: leave as created
    if group is not None:
        mode, gid = 0o640, group
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        created = os.fstat(fd)
        if (uid, gid) != (created.st_uid, created.st_gid):
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # after fchown, which may clear set-id bits
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def add_key(path: Path, name: str, *, group: int | None = None, **limits: object) -> str:
    """Add a key called ``name`` (``limits``: the :class:`ApiKey` fields rpm, tpm,
    concurrency, max_tokens, models) to the file at ``path`` -- created when missing --
    and return its secret, which is stored nowhere: only its digest is written.
    ``group``: as in :func:`save_keys`."""
    keys = load_keys(path) if path.exists() else []
    if any(key.name == name for key in keys):
        raise KeyNameTaken(f"a key named '{name}' already exists in {path}")
    secret = new_secret()
    keys.append(ApiKey.model_validate({"name": name, "sha256": digest_secret(secret), **limits}))
    save_keys(path, keys, group=group)
    return secret
