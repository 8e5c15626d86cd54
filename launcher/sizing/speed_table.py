"""The published measurements the speed model is calibrated on, and its error on each.

    >>> worst = max(abs(p.error) for p in calibration_report())
    >>> worst < 0.25
    True

The table is ``configs/speed_measurements.yaml``: one entry per published run, with its source.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from launcher.config_files import CONFIG_DIR
from launcher.sizing.gpus import UnknownGpuError, get_gpu, without_nvlink
from launcher.sizing.memory import Quantization
from launcher.sizing.models import UnknownModelError, load_model
from launcher.sizing.speed import SpeedCalibration, Workload, speed_at

MEASUREMENTS_FILE = CONFIG_DIR / "speed_measurements.yaml"


class Measurement(BaseModel):
    """One published run: output tok/s measured at each concurrency of one workload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(pattern=r"^https://")
    study: str = Field(default="", description="runs of one publication share it; default: source")
    note: str = ""
    vllm: str = Field(description='the vLLM version the source names, or "unstated"')
    metric: Literal["output", "total"] = "output"
    gpu: str
    model: str
    quant: Quantization
    tensor_parallel: int = Field(default=1, ge=1, le=8)
    eager: bool = Field(default=False, description="run with --enforce-eager (no CUDA graphs)")
    nvlink: bool | None = Field(
        default=None, description="False: the run's GPUs talked over PCIe; None: as the profile"
    )
    prompt_tokens: int = Field(ge=1)
    output_tokens: int = Field(ge=1)
    points: dict[int, float] = Field(min_length=1, description="concurrency -> tok/s (metric)")

    @property
    def legacy_engine(self) -> bool:
        """Measured on vLLM before 0.6 (the first version number the ``vllm`` field names)."""
        found = re.search(r"(\d+)\.(\d+)", self.vllm)
        return found is not None and (int(found[1]), int(found[2])) < (0, 6)

    @property
    def group(self) -> str:
        """What leave-one-source-out leaves out together: the study, else the page."""
        return self.study or self.source


class PointError(BaseModel):
    """The model against one published point: ``error`` = predicted / measured - 1."""

    model_config = ConfigDict(frozen=True)

    source: str
    group: str
    label: str
    concurrency: int
    measured_tok_s: float
    predicted_tok_s: float

    @property
    def error(self) -> float:
        return self.predicted_tok_s / self.measured_tok_s - 1


def load_measurements(path: Path | None = None) -> list[Measurement]:
    return list(_load_cached(Path(path or MEASUREMENTS_FILE).resolve()))


@cache
def _load_cached(path: Path) -> tuple[Measurement, ...]:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, list):
        raise ValueError(f"{path.name}: expected a list of measurements")
    return tuple(Measurement.model_validate(entry) for entry in raw)


def usable(measurements: list[Measurement]) -> tuple[list[Measurement], list[Measurement]]:
    """Runs whose GPU and model have profiles here, and the runs skipped for lack of one."""
    kept, skipped = [], []
    for run in measurements:
        try:
            get_gpu(run.gpu)
            load_model(run.model)
        except (UnknownGpuError, UnknownModelError):
            skipped.append(run)
        else:
            kept.append(run)
    return kept, skipped


def calibration_report(
    calibration: SpeedCalibration | None = None, measurements: list[Measurement] | None = None
) -> list[PointError]:
    """Every usable published point, predicted at its own workload and concurrency."""
    report = []
    runs = measurements if measurements is not None else load_measurements()
    current = calibration or SpeedCalibration()
    legacy = replace(
        current,
        compute_efficiency=current.legacy_compute_efficiency,
        sequence_overhead_s=current.legacy_sequence_overhead_s,
        step_overhead_per_layer_s=current.legacy_step_overhead_per_layer_s,
    )
    for run in usable(runs)[0]:
        workload = Workload(
            model=load_model(run.model),
            quant=run.quant,
            prompt_tokens=run.prompt_tokens,
            output_tokens=run.output_tokens,
            tensor_parallel=run.tensor_parallel,
            eager=run.eager,
        )
        gpu = get_gpu(run.gpu)
        if run.nvlink is False:
            gpu = without_nvlink(gpu)
        parallel = f" tp{run.tensor_parallel}" if run.tensor_parallel > 1 else ""
        link = (" pcie" if run.nvlink is False else "") + (" eager" if run.eager else "")
        label = (
            f"{run.model} {run.quant} on {run.gpu}{parallel}{link}, "
            f"{run.prompt_tokens}/{run.output_tokens}"
        )
        for concurrency, measured in sorted(run.points.items()):
            engine = legacy if run.legacy_engine else current
            predicted = speed_at(workload, gpu, concurrency, engine).total_tok_s
            if run.metric == "total":
                predicted *= workload.tokens_per_output_token
            report.append(
                PointError(
                    source=run.source,
                    group=run.group,
                    label=label,
                    concurrency=concurrency,
                    measured_tok_s=measured,
                    predicted_tok_s=round(predicted, 1),
                )
            )
    return report
