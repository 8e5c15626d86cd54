"""``vkit keys add|list|disable|enable``: manage the gateway's keys file.

``add`` prints the new secret once, alone on the last line of stdout, and stores only its
SHA-256. ``list`` shows names and limits, never digests in full. Every change rewrites the
file atomically and keeps its owner, group and mode (see :mod:`gateway.keyfile`); a new
file is 0600, or with ``--group GROUP`` 0640 for that group -- the gateway's service user
(``vkit`` under systemd) reads it through its group, nobody else can:

    sudo vkit keys add alice --file /etc/vkit/keys.yaml --rpm 60           # install.sh's file
    sudo vkit keys add alice --file /srv/keys.yaml --group vkit --rpm 60    # a new file
"""

from __future__ import annotations

import argparse
import grp
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.keyfile import NAME_PATTERN, ApiKey, KeyFileError, add_key, load_keys, save_keys
from vkit.exit_codes import CliError

DEFAULT_FILE = Path("keys.yaml")


class AddKeyArgs(BaseModel):
    """``vkit keys add``, typed."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    file: Path
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    models: tuple[str, ...] = ()

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value if value is not None else ()


class NamedKeyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    file: Path


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keys", help="manage the gateway's API keys file", description=__doc__
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="create a key and print its secret once")
    add.add_argument("name")
    _file_flag(add)
    add.add_argument("--rpm", type=int, help="requests per minute (default: unlimited)")
    add.add_argument("--tpm", type=int, help="tokens per minute (default: unlimited)")
    add.add_argument("--concurrency", type=int, help="requests in flight (default: unlimited)")
    add.add_argument("--max-tokens", type=int, help="max_tokens cap per request")
    add.add_argument("--models", help="allowed models, comma-separated (default: all)")
    add.add_argument(
        "--group",
        help="make the file GROUP's, mode 0640: the gateway's service group reads it "
        "(default: keep an existing file's owner/group/mode; a new file is 0600)",
    )
    add.set_defaults(handler=run_add)
    listing = actions.add_parser("list", help="show key names and limits")
    _file_flag(listing)
    listing.set_defaults(handler=run_list)
    for action, enabled in (("disable", False), ("enable", True)):
        sub = actions.add_parser(action, help=f"{action} a key by name")
        sub.add_argument("name")
        _file_flag(sub)
        sub.set_defaults(handler=run_toggle, enabled=enabled)


def _file_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file", type=Path, default=DEFAULT_FILE, help="keys file (default: keys.yaml)"
    )


def _load(path: Path) -> list[ApiKey]:
    try:
        return load_keys(path)
    except KeyFileError as exc:
        raise CliError(str(exc)) from None


def _save(path: Path, keys: list[ApiKey]) -> None:
    try:
        save_keys(path, keys)
    except OSError as exc:
        raise CliError(f"{path}: cannot write: {exc.strerror or exc}") from None


def group_id(name_or_gid: str) -> int:
    """A group name (``vkit``) or number as a gid; an unknown name is a one-line error."""
    if name_or_gid.isdigit():
        return int(name_or_gid)
    try:
        return grp.getgrnam(name_or_gid).gr_gid
    except KeyError:
        raise CliError(f"no group named '{name_or_gid}'") from None


def run_add(args: argparse.Namespace) -> int:
    group = group_id(args.group) if args.group else None
    request = AddKeyArgs(
        name=args.name,
        file=args.file,
        rpm=args.rpm,
        tpm=args.tpm,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        models=args.models,
    )
    limits = request.model_dump(exclude={"name", "file"})
    try:
        secret = add_key(request.file, request.name, group=group, **limits)
    except KeyFileError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"{request.file}: cannot write: {exc.strerror or exc}") from None
    print(f"created key '{request.name}' in {request.file}; the secret is shown only once:")
    print(secret)
    return 0


def run_list(args: argparse.Namespace) -> int:
    keys = _load(Path(args.file))
    print(
        f"{'NAME':<20} {'ENABLED':<8} {'RPM':>7} {'TPM':>9} {'CONC':>5} {'MAXTOK':>7}  "
        "SHA256    MODELS"
    )
    for key in keys:
        print(
            f"{key.name:<20} {'yes' if key.enabled else 'no':<8} {_n(key.rpm):>7} "
            f"{_n(key.tpm):>9} {_n(key.concurrency):>5} {_n(key.max_tokens):>7}  "
            f"{key.sha256[:8]}  {','.join(key.models) or '*'}"
        )
    return 0


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def run_toggle(args: argparse.Namespace) -> int:
    request = NamedKeyArgs(name=args.name, file=args.file)
    keys = _load(request.file)
    index = next((i for i, key in enumerate(keys) if key.name == request.name), None)
    if index is None:
        raise CliError(f"no key named '{request.name}' in {request.file}")
    keys[index] = keys[index].model_copy(update={"enabled": bool(args.enabled)})
    _save(request.file, keys)
    state = "enabled" if args.enabled else "disabled"
    print(f"key '{request.name}' {state}", file=sys.stderr)
    return 0
