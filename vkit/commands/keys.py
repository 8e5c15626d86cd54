"""``vkit keys add|list|disable|enable|budget``: manage the gateway's keys file.

``add`` prints the new secret once, alone on the last line of stdout, and stores only its
SHA-256. ``list`` shows names and limits, never digests in full. Every change rewrites the
file atomically and keeps its owner, group and mode (see :mod:`gateway.keyfile`); a new
file is 0600, or with ``--group GROUP`` 0640 for that group -- the gateway's service user
(``vkit`` under systemd) reads it through its group, nobody else can:

    sudo vkit keys add alice --file /etc/vkit/keys.yaml --rpm 60           # install.sh's file
    sudo vkit keys add alice --file /srv/keys.yaml --group vkit --rpm 60    # a new file
    vkit keys budget alice --period month --tokens 40000000 --dollars 250   # the ledger's
    vkit keys budget alice --period month --clear

``budget`` sets a key's budget for one window (UTC day, ISO week, calendar month, or total;
docs/usage-ledger.md); a budget below what the key has already spent in that window, by the
ledger (``--ledger URL``, else ``usage.sqlite3`` beside the keys file when there is one), is
refused: it would refuse the key at once.
"""

from __future__ import annotations

import argparse
import grp
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.keyfile import NAME_PATTERN, ApiKey, KeyFileError, add_key, load_keys, save_keys
from gateway.ledger import KeyBudgets, LedgerError, Limit, open_store
from gateway.ledger.budgets import PERIODS, Period, resets_at
from gateway.ledger.writer import read_spending
from vkit.exit_codes import CliError, UsageError

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
    spill: bool | None = None  # None: not written (false)
    on_premises: bool | None = None

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
        "--spill",
        action="store_true",
        help="its requests may go to the gateway's spill-over endpoint (docs/spill-over.md)",
    )
    add.add_argument(
        "--on-premises",
        action="store_true",
        help="its requests never leave the replicas, whatever --spill says",
    )
    add.add_argument(
        "--group",
        help="make the file GROUP's, mode 0640: the gateway's service group reads it "
        "(default: keep an existing file's owner/group/mode; a new file is 0600)",
    )
    add.set_defaults(handler=run_add)
    listing = actions.add_parser("list", help="show key names and limits")
    _file_flag(listing)
    listing.set_defaults(handler=run_list)
    budget = actions.add_parser("budget", help="set or clear a key's budget for one window")
    budget.add_argument("name")
    _file_flag(budget)
    budget.add_argument("--period", choices=PERIODS, required=True, help="the budget's window")
    budget.add_argument("--tokens", type=int, help="most tokens (prompt + completion)")
    budget.add_argument("--dollars", type=float, help="most dollars of the GPU bill")
    budget.add_argument("--clear", action="store_true", help="remove the window's budget")
    budget.add_argument("--ledger", help="the ledger's URL, to check what is already spent")
    budget.set_defaults(handler=run_budget)
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
        spill=True if args.spill else None,
        on_premises=True if args.on_premises else None,
    )
    limits = request.model_dump(exclude={"name", "file"}, exclude_none=True)
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
        "SHA256    MODELS  BUDGETS"
    )
    for key in keys:
        print(
            f"{key.name:<20} {'yes' if key.enabled else 'no':<8} {_n(key.rpm):>7} "
            f"{_n(key.tpm):>9} {_n(key.concurrency):>5} {_n(key.max_tokens):>7}  "
            f"{key.sha256[:8]}  {','.join(key.models) or '*'}  {_budgets(key)}"
        )
    return 0


def _budgets(key: ApiKey) -> str:
    """``month:40000000tok/$250 total:$1000``, or ``-``."""
    if key.budgets is None:
        return "-"
    shown = []
    for period, limit in key.budgets.limits():
        parts = [f"{limit.tokens}tok"] if limit.tokens is not None else []
        parts += [f"${limit.dollars:g}"] if limit.dollars is not None else []
        shown.append(f"{period}:{'/'.join(parts)}")
    return " ".join(shown)


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


def run_budget(args: argparse.Namespace) -> int:
    request = NamedKeyArgs(name=args.name, file=args.file)
    period: Period = args.period
    if args.clear == (args.tokens is not None or args.dollars is not None):
        raise UsageError("give --tokens and/or --dollars, or --clear")
    limit = None if args.clear else _limit(args.tokens, args.dollars)
    keys = _load(request.file)
    index = next((i for i, key in enumerate(keys) if key.name == request.name), None)
    if index is None:
        raise CliError(f"no key named '{request.name}' in {request.file}")
    if limit is not None:
        _check_not_spent(request.name, period, limit, args.ledger, request.file)
    budgets = keys[index].budgets or KeyBudgets()
    updated = budgets.model_copy(update={period: limit})
    keys[index] = keys[index].model_copy(update={"budgets": updated if updated.limits() else None})
    _save(request.file, keys)
    said = "cleared" if limit is None else "set"
    print(f"key '{request.name}': {period} budget {said}", file=sys.stderr)
    return 0


def _limit(tokens: int | None, dollars: float | None) -> Limit:
    try:
        return Limit(tokens=tokens, dollars=dollars)
    except ValueError:
        raise UsageError("--tokens must be at least 1 and --dollars above 0") from None


def _check_not_spent(
    name: str, period: Period, limit: Limit, ledger: str | None, keys_file: Path
) -> None:
    """Refuse a budget the key has already spent in ``period``'s window, by the ledger."""
    beside = keys_file.parent / "usage.sqlite3"
    if ledger is None and not beside.is_file():
        return  # no ledger yet: nothing spent
    store = open_store(ledger or f"sqlite:///{beside}")
    now = datetime.now(UTC)
    try:
        spent = read_spending(store, now.timestamp(), dollars=limit.dollars is not None)
    except LedgerError as exc:
        raise CliError(f"{exc} (pass --ledger URL to check what the key has spent)") from None
    finally:
        store.close()
    mine = spent.get(name)
    if mine is None:
        return
    window = "in total" if period == "total" else f"this {period}"
    reset = resets_at(period, now)
    after = f"; the window resets at {reset:%Y-%m-%d %H:%M} UTC" if reset else ""
    used_tokens = mine.tokens.get(period, 0)
    if limit.tokens is not None and used_tokens > limit.tokens:
        raise CliError(
            f"key '{name}' has already used {used_tokens:,} tokens {window}, above the "
            f"budget of {limit.tokens:,}{after}"
        )
    used_dollars = mine.dollars.get(period, 0.0)
    if limit.dollars is not None and used_dollars > limit.dollars:
        raise CliError(
            f"key '{name}' has already spent ${used_dollars:.2f} {window}, above the "
            f"budget of ${limit.dollars:.2f}{after}"
        )
