"""Deployment profiles (``configs/deployments/*.yaml``) and the launch command's environment.

A profile holds :class:`launcher.supervision.launch_spec.LaunchSettings` fields; flags
given on the command line override it, and pass-through vLLM flags override the profile's
flag by flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from launcher.config_files import DEPLOYMENTS_DIR
from launcher.errors import ProfileError
from launcher.supervision.progress import STALL_AFTER_S
from launcher.supervision.vllm_args import split_flags


class LaunchEnvironment(BaseSettings):
    """What ``vkit launch`` reads from the environment (only at the entry point).

    ``VLLM_CPU_KVCACHE_SPACE``: the CPU engine's KV cache in GiB (vLLM's own variable).
    ``VKIT_MODELS_DIR``: where the built-in tiny model is built (default ``.vkit/models``).
    ``NOTIFY_SOCKET`` / ``WATCHDOG_USEC``: set by systemd for ``Type=notify`` units.
    ``VLLM_API_KEY``: vLLM's own API key; the readiness check sends it to ``/v1/models``.
    ``VKIT_STALL_AFTER_S``: under systemd, seconds of no progress with requests running after
    which the watchdog pings stop (:mod:`launcher.supervision.progress`; 0: never).
    """

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    vllm_cpu_kvcache_space: int | None = None
    vkit_models_dir: Path = Path(".vkit/models")
    notify_socket: str | None = None
    watchdog_usec: int | None = None
    vllm_api_key: SecretStr | None = None
    vkit_stall_after_s: float = Field(default=STALL_AFTER_S, ge=0)

    @property
    def watchdog_interval_s(self) -> float | None:
        return self.watchdog_usec / 1e6 if self.watchdog_usec else None


def find_profile(name_or_path: str) -> Path:
    """A profile file path, or a name in ``configs/deployments`` (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (DEPLOYMENTS_DIR / name_or_path, DEPLOYMENTS_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in DEPLOYMENTS_DIR.glob("*.yaml")))
    raise ProfileError(f"no deployment profile {name_or_path!r}; known profiles: {known}")


def load_profile(name_or_path: str) -> dict[str, Any]:
    """The profile's fields as a dict (validated later, with the flags, as LaunchSettings)."""
    path = find_profile(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a mapping of launch settings")
    data.pop("description", None)
    if "extra_args" in data:
        data["extra_args"] = tuple(str(arg) for arg in data["extra_args"] or ())
    return data


def merge_extra_args(profile: tuple[str, ...], flags: tuple[str, ...]) -> tuple[str, ...]:
    """The profile's pass-through flags, minus those the command line gives again, + those."""
    overridden = {key for key, _ in split_flags(flags)}
    kept = [tok for key, toks in split_flags(profile) if key not in overridden for tok in toks]
    return (*kept, *flags)
