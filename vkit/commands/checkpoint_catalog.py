"""``vkit checkpoints check``: the catalog's facts against each repository's own config.json.

    vkit checkpoints check                              # every pre-quantized entry
    vkit checkpoints check --model llama-3.1-70b --save configs-seen/

Run it where the Hugging Face hub is reachable (wherever vLLM runs). One line per
pre-quantized entry of ``configs/checkpoints.yaml``: ``ok``, ``MISMATCH`` with the differing
facts, or ``not reachable``; exit 1 when any entry disagrees with its config.json, else 0.
``--save DIR`` writes each fetched config.json verbatim as ``<owner>--<name>.json``, the name
the tests' data uses, so a maintainer can turn a ``verified: false`` entry into a checked one
(copy the file under tests/launcher/sizing/checkpoint_configs/, name it with ``config:``, add
its source to SOURCES.md). The command never edits the catalog.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from launcher.errors import UnknownModelError
from launcher.sizing.checkpoint_check import (
    CheckpointCheck,
    CheckpointConfigSource,
    HubEnvironment,
    check_checkpoint,
)
from launcher.sizing.checkpoints import Checkpoint, load_catalog, snapshot_key


class CheckArgs(BaseModel):
    """``vkit checkpoints check``, typed."""

    model_config = ConfigDict(extra="forbid")

    save: Path | None = None
    model: str | None = None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "checkpoints",
        help="check configs/checkpoints.yaml against the repositories' config.json",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="fetch each pre-quantized entry's config.json and compare its facts"
    )
    check.add_argument("--save", type=Path, metavar="DIR", help="write each fetched config.json")
    check.add_argument("--model", help="only this snapshot's entries (name or alias)")
    check.set_defaults(handler=run_check)


def catalog_entries(model: str | None = None) -> list[tuple[str, Checkpoint]]:
    """``(snapshot/quant, checkpoint)`` for every pre-quantized entry (of ``model`` only)."""
    catalog = load_catalog()
    if model is not None:
        key = snapshot_key(model)
        if key not in catalog:
            known = ", ".join(sorted(catalog))
            raise UnknownModelError(f"no model {model!r} in configs/checkpoints.yaml: {known}")
        catalog = {key: catalog[key]}
    return [
        (f"{name}/{quant}", checkpoint)
        for name, entries in catalog.items()
        for quant, checkpoint in entries
        if checkpoint is not None and checkpoint.prequantized
    ]


def check_line(entry: str, check: CheckpointCheck) -> str:
    """``ok``, ``MISMATCH: ...`` or ``not reachable (...)``, then the entry and repository."""
    where = f"{entry} {check.checkpoint.repo}"
    if check.status == "ok":
        return f"ok             {where}"
    if check.status == "mismatch":
        return f"MISMATCH       {where}: {'; '.join(check.mismatches)}"
    return f"not reachable  {where} ({check.problem})"


def saved_name(repo: str) -> str:
    """``owner/name`` -> ``owner--name.json``, as the tests' kept configs are named."""
    return f"{repo.replace('/', '--')}.json"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def run_check(args: argparse.Namespace, *, source: CheckpointConfigSource | None = None) -> int:
    """``source`` defaults to the Hugging Face cache, then the hub (see HubEnvironment)."""
    typed = CheckArgs(save=args.save, model=args.model)
    source = source or HubEnvironment().source()
    entries = catalog_entries(typed.model)
    if typed.save is not None:
        typed.save.mkdir(parents=True, exist_ok=True)
    counts = {"ok": 0, "mismatch": 0, "unreachable": 0}
    for entry, checkpoint in entries:
        check = check_checkpoint(checkpoint, source)
        counts[check.status] += 1
        print(check_line(entry, check), flush=True)
        if typed.save is not None and check.raw is not None:
            write_atomically(typed.save / saved_name(checkpoint.repo), check.raw)
    print(
        f"vkit checkpoints: {len(entries)} entries: {counts['ok']} ok, "
        f"{counts['mismatch']} mismatched, {counts['unreachable']} not reachable",
        file=sys.stderr,
    )
    return 1 if counts["mismatch"] else 0
