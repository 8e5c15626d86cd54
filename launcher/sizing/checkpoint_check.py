"""Check a catalog checkpoint's facts against the config.json its repository serves.

    >>> entry = Checkpoint(repo="org/m-AWQ", method="awq", bits=4, group_size=128,
    ...                    verified=False)
    >>> config = {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32}}
    >>> fact_mismatches(entry, config)
    ['group_size: catalog 128, config.json 32']

The fit solver sizes weights from the catalog's facts (``configs/checkpoints.yaml``), so a
wrong entry is a wrong plan. Wherever vLLM runs, the hub is reachable (vLLM downloads the
checkpoint there), so that is where the check can happen: ``vkit launch`` checks the entry it
serves before starting vLLM, ``vkit checkpoints check`` checks them all.

A :data:`CheckpointConfigSource` is the seam: ``repo -> config.json bytes`` (verbatim, so
``--save`` keeps test data unchanged), or None when the file cannot be had. The default,
:class:`HubConfigSource`, reads the local Hugging Face cache first and then, unless offline,
downloads with ``huggingface_hub`` (a vLLM dependency, imported only when needed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from launcher.errors import CheckpointMismatchError
from launcher.sizing.checkpoints import Checkpoint, quantization_facts

CheckpointConfigSource = Callable[[str], bytes | None]
"""``repo`` (``owner/name``) -> the bytes of its config.json, or None when not obtainable."""

Downloader = Callable[[str, Path], Path | None]
"""``(repo, cache_dir)`` -> the path of the downloaded config.json, None when the hub has none
for the repository, :class:`HubUnreachable` when the hub did not answer."""

_FACTS = ("method", "bits", "group_size", "scheme")


def fact_mismatches(checkpoint: Checkpoint, config: dict[str, Any]) -> list[str]:
    """``field: catalog X, config.json Y`` for each fact both the catalog and the config state
    and that differs; empty when they agree. The method is always compared (a config.json
    without ``quantization_config`` states a 16-bit checkpoint, method ``none``)."""
    found = quantization_facts(config)
    mismatches = []
    for name in _FACTS:
        ours, theirs = getattr(checkpoint, name), getattr(found, name)
        if ours is None or theirs is None or ours == theirs:
            continue
        mismatches.append(f"{name}: catalog {ours}, config.json {theirs}")
    return mismatches


CheckStatus = Literal["ok", "mismatch", "unreachable"]


@dataclass(frozen=True)
class CheckpointCheck:
    """One entry checked: the config.json as fetched (None: not obtainable or not JSON), what
    differs, and why it could not be checked when it could not."""

    checkpoint: Checkpoint
    raw: bytes | None
    mismatches: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def status(self) -> CheckStatus:
        if self.problem is not None:
            return "unreachable"
        return "mismatch" if self.mismatches else "ok"


def check_checkpoint(checkpoint: Checkpoint, source: CheckpointConfigSource) -> CheckpointCheck:
    """Fetch ``checkpoint``'s config.json through ``source`` and compare its facts."""
    raw = source(checkpoint.repo)
    if raw is None:
        return CheckpointCheck(checkpoint, None, problem="config.json not obtainable")
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return CheckpointCheck(checkpoint, raw, problem="config.json is not JSON")
    if not isinstance(config, dict):
        return CheckpointCheck(checkpoint, raw, problem="config.json is not a JSON object")
    return CheckpointCheck(checkpoint, raw, tuple(fact_mismatches(checkpoint, config)))


def require_matching_config(
    entry: str, checkpoint: Checkpoint, source: CheckpointConfigSource
) -> str:
    """Before serving ``checkpoint`` (catalog ``entry``, e.g. ``llama-3.1-70b/awq``): a note
    line when its config.json agrees or cannot be read; a :class:`CheckpointMismatchError`
    naming the differing facts and the way out when it disagrees."""
    check = check_checkpoint(checkpoint, source)
    repo = checkpoint.repo
    if check.status == "unreachable":
        return (
            f"could not read {repo}/config.json to check the catalog's facts: "
            f"vLLM will report it if the repository is unreachable"
        )
    if check.status == "mismatch":
        raise CheckpointMismatchError(
            f"configs/checkpoints.yaml entry {entry} ({repo}) disagrees with the "
            f"repository's config.json: {'; '.join(check.mismatches)}; pass the repository "
            f"or its directory as --model yourself, or correct configs/checkpoints.yaml"
        )
    return f"checked {repo}/config.json: it states the catalog's quantization facts"


def cached_config(cache_dir: Path, repo: str) -> Path | None:
    """``repo``'s config.json in a Hugging Face hub cache
    (``models--<owner>--<name>/snapshots/<rev>/config.json``): the revision ``refs/main``
    names when it holds one, else the newest snapshot that does."""
    root = cache_dir / f"models--{repo.replace('/', '--')}"
    try:
        main = (root / "refs" / "main").read_text().strip()
    except OSError:
        main = ""
    if main and (root / "snapshots" / main / "config.json").is_file():
        return root / "snapshots" / main / "config.json"
    found = [path for path in root.glob("snapshots/*/config.json") if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


class HubUnreachable(Exception):
    """Raised by a :data:`Downloader` when the hub did not answer at all (no network)."""


def hub_download(repo: str, cache_dir: Path) -> Path | None:
    """``huggingface_hub.hf_hub_download(repo, "config.json")`` into ``cache_dir``. None when
    huggingface_hub is not installed or the hub answered with an error (missing, gated);
    :class:`HubUnreachable` when it did not answer (after huggingface_hub's own retries)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        return None
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings are not ours to print
    try:
        return Path(hf_hub_download(repo, "config.json", cache_dir=cache_dir))
    except HfHubHTTPError:
        return None
    except Exception as exc:  # no network, timed out, offline: any failure means "not read"
        raise HubUnreachable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        hub_logger.setLevel(level)


@dataclass
class HubConfigSource:
    """The default :data:`CheckpointConfigSource`: the local hub cache, then the hub itself
    (skipped when ``offline``, as ``HF_HUB_OFFLINE`` asks, or when ``download`` is None).
    Once the hub does not answer, this source stops asking it: an unreachable hub costs
    huggingface_hub's retries (about 20 s) once, not once per checkpoint."""

    cache_dir: Path
    offline: bool = False
    download: Downloader | None = hub_download

    def __call__(self, repo: str) -> bytes | None:
        path = cached_config(self.cache_dir, repo)
        if path is None and not self.offline and self.download is not None:
            try:
                path = self.download(repo, self.cache_dir)
            except HubUnreachable:
                self.offline = True
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    def cache_only(self) -> HubConfigSource:
        """The same cache, no download (``vkit launch --dry-run``: cheap, no network)."""
        return HubConfigSource(self.cache_dir, offline=True, download=None)


class HubEnvironment(BaseSettings):
    """Where huggingface_hub keeps its cache, read as it reads it (only at entry points):
    ``HF_HUB_CACHE``, else ``$HF_HOME/hub`` (``HF_HOME`` defaults to
    ``$XDG_CACHE_HOME/huggingface``, then ``~/.cache/huggingface``); ``HF_HUB_OFFLINE``
    (1/on/yes/true) forbids the network."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    xdg_cache_home: Path | None = None
    hf_home: Path | None = None
    hf_hub_cache: Path | None = None
    hf_hub_offline: bool = False

    @field_validator("hf_hub_offline", mode="before")
    @classmethod
    def _true_as_huggingface_hub_reads_it(cls, value: object) -> object:
        """Any other value (``0``, empty, a typo) is online, as in huggingface_hub."""
        return str(value).upper() in ("1", "ON", "YES", "TRUE") if isinstance(value, str) else value

    @property
    def cache_dir(self) -> Path:
        if self.hf_hub_cache is not None:
            return self.hf_hub_cache.expanduser()
        home = self.hf_home or (self.xdg_cache_home or Path.home() / ".cache") / "huggingface"
        return home.expanduser() / "hub"

    def source(self) -> HubConfigSource:
        return HubConfigSource(self.cache_dir, offline=self.hf_hub_offline)
