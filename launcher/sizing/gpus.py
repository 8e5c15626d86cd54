"""GPU profiles: VRAM, bandwidth, compute, FP8 support and prices, from ``configs/gpus.yaml``.

>>> gpu = get_gpu("rtx4090")
>>> gpu.vram_gib, gpu.supports_fp8
(23.65, True)
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from launcher.config_files import GPUS_FILE
from launcher.errors import UnknownGpuError

GIB = 1024**3

Arch = Literal["turing", "ampere", "ada", "hopper", "blackwell"]


class GpuProfile(BaseModel):
    """One GPU model. ``vram_bytes`` is the total CUDA reports, not the marketing size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = ""
    name: str
    vram_bytes: int = Field(gt=0)
    bandwidth_gbs: float = Field(gt=0, description="memory bandwidth, GB/s (1e9 bytes/s)")
    bf16_tflops: float = Field(gt=0, description="dense bf16 TFLOP/s")
    fp8_tflops: float | None = Field(
        default=None, gt=0, description="dense FP8 TFLOP/s; None: no FP8 tensor cores"
    )
    arch: Arch
    fp8: bool = Field(description="FP8 W8A8 support (Ada, Hopper and newer)")
    nvlink_gbs: float | None = Field(
        default=None, gt=0, description="NVLink bandwidth per direction, GB/s; None: PCIe only"
    )
    per_node: int = Field(default=8, ge=1, le=16, description="most GPUs of this kind in a node")
    prices: dict[str, float] = Field(default_factory=dict, description="$/hr per provider")
    default_price: str | None = None

    @model_validator(mode="after")
    def _fp8_compute_iff_fp8(self) -> GpuProfile:
        if self.fp8 != (self.fp8_tflops is not None):
            raise ValueError("fp8_tflops is given exactly when the GPU has FP8 (fp8: true)")
        return self

    @model_validator(mode="after")
    def _default_price_is_listed(self) -> GpuProfile:
        if self.default_price is not None and self.default_price not in self.prices:
            raise ValueError(f"default_price {self.default_price!r} is not one of its prices")
        return self

    @property
    def vram_gib(self) -> float:
        return round(self.vram_bytes / GIB, 2)

    @property
    def supports_fp8(self) -> bool:
        return self.fp8

    @property
    def supports_marlin(self) -> bool:
        """AWQ/GPTQ Marlin kernels need Ampere or newer
        (docs/gpus-and-costs.md#quantization-support)."""
        return self.arch != "turing"

    @property
    def price_per_hour(self) -> float | None:
        """The default provider's $/hr, or None when the profile has no price."""
        if self.default_price is None:
            return None
        return self.prices[self.default_price]


def load_gpus(path: Path | None = None) -> dict[str, GpuProfile]:
    """All GPU profiles in ``path`` (default ``configs/gpus.yaml``), keyed by short name."""
    return dict(_load_gpus_cached(Path(path or GPUS_FILE).resolve()))


@cache
def _load_gpus_cached(path: Path) -> tuple[tuple[str, GpuProfile], ...]:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: expected a mapping of GPU name -> profile")
    return tuple((key, GpuProfile(key=key, **fields)) for key, fields in raw.items())


def normalize_gpu_name(name: str) -> str:
    """``RTX-4090`` / ``rtx_4090`` / ``H100 SXM`` -> ``rtx4090`` / ``h100-sxm``."""
    cleaned = name.strip().lower().replace("_", "-").replace(" ", "-")
    return cleaned.replace("rtx-", "rtx")


def without_nvlink(gpu: GpuProfile) -> GpuProfile:
    """``gpu`` as a board whose GPUs talk over PCIe only (a PCIe card of an SXM kind, or a
    cloud instance without NVLink): tensor parallel's all-reduce pays PCIe's bandwidth and
    latency (:mod:`launcher.sizing.speed`)."""
    return gpu.model_copy(update={"nvlink_gbs": None})


def get_gpu(name: str, path: Path | None = None) -> GpuProfile:
    """The profile for ``name``; an :class:`UnknownGpuError` listing the known ones otherwise."""
    gpus = load_gpus(path)
    key = normalize_gpu_name(name)
    if key in gpus:
        return gpus[key]
    aliases = {
        "h100": "h100-sxm",
        "a100": "a100-80gb",
        "4090": "rtx4090",
        "3090": "rtx3090",
        "a10g": "a10",
        "a100-40": "a100-40gb",
        "a100-80": "a100-80gb",
    }
    if key in aliases and aliases[key] in gpus:
        return gpus[aliases[key]]
    raise UnknownGpuError(f"unknown GPU {name!r}; known GPUs: {', '.join(sorted(gpus))}")
