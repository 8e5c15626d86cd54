"""The cost guide's throughput table, and which configuration each row must mean.

The guide (docs/gpus-and-costs.md#throughput-table) quotes every row as if the model ran in FP16 on
one GPU. Two kinds of row cannot be that: 70B on an H100 or H200 (141 GB of FP16 weights exceed 80
GB, and 0.92 x 141 GB) and 13B on an L40S at 40 tok/s (26 GB of FP16 weights over 864 GB/s decode
one stream at ~30 tok/s). :func:`implied_configuration` finds the best-quality configuration that
carries the row's load, so the report can say what the guide's number must mean.

    >>> implied_configuration(GUIDE_ROWS[5]).quant        # 70B on one H100
    'fp8'
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.sizing.capacity.throughput import GpuThroughput, gpu_throughput
from launcher.sizing.gpus import get_gpu
from launcher.sizing.memory import Quantization
from launcher.sizing.models import ModelSpec, load_model

STATED_QUANT: Quantization = "fp16"
_TRIED: tuple[Quantization, ...] = ("fp16", "fp8", "int8", "awq")


@dataclass(frozen=True)
class GuideRow:
    """``7B H100 40-60, 1200-2000``: concurrent users and total tok/s on one GPU."""

    model: str
    gpu: str
    users: tuple[int, int]
    total_tok_s: tuple[int, int]

    @property
    def per_user_tok_s(self) -> float:
        """The row's own per-user speed: mid total over mid users (30-40 tok/s)."""
        return sum(self.total_tok_s) / sum(self.users)

    def text(self) -> str:
        return (
            f"{self.model.upper()} {self.gpu}: {self.users[0]}-{self.users[1]} users, "
            f"{self.total_tok_s[0]:,}-{self.total_tok_s[1]:,} tok/s"
        )

    def holds(self, speed: GpuThroughput) -> bool:
        """The configuration carries the row's load: at least its low users and tok/s.

        Not at most its high ones: the guide's ranges sit below what vLLM measures on the
        H100, H200 and L40S (docs/gpus-and-costs.md#throughput-table), so the speed model,
        calibrated on those measurements, lands above them there.
        """
        return speed.users >= self.users[0] and speed.total_tok_s >= self.total_tok_s[0]


GUIDE_ROWS: tuple[GuideRow, ...] = (
    GuideRow("7b", "rtx4090", (10, 15), (400, 600)),
    GuideRow("7b", "l40s", (20, 30), (600, 900)),
    GuideRow("7b", "h100-sxm", (40, 60), (1_200, 2_000)),
    GuideRow("13b", "l40s", (8, 12), (300, 500)),
    GuideRow("13b", "h100-sxm", (25, 35), (800, 1_200)),
    GuideRow("70b", "h100-sxm", (5, 8), (150, 250)),
    GuideRow("70b", "h200", (10, 15), (300, 500)),
)


@dataclass(frozen=True)
class ImpliedConfiguration:
    quant: Quantization
    speed: GpuThroughput
    stated: GpuThroughput


def _speed(row: GuideRow, quant: Quantization, model: ModelSpec | None = None) -> GpuThroughput:
    return gpu_throughput(
        get_gpu(row.gpu),
        model or load_model(row.model),
        quant,
        target_tok_s=row.per_user_tok_s,
        prompt_tokens=500,
        output_tokens=200,
    )


def implied_configuration(row: GuideRow) -> ImpliedConfiguration | None:
    """The best-quality quantization (one GPU) that reproduces ``row``; None if none does."""
    model = load_model(row.model)
    stated = _speed(row, STATED_QUANT, model)
    for quant in _TRIED:
        speed = stated if quant == STATED_QUANT else _speed(row, quant, model)
        if row.holds(speed):
            return ImpliedConfiguration(quant, speed, stated)
    return None


def guide_notes(model: ModelSpec, quant: str, gpu_keys: list[str]) -> list[str]:
    """For the guide's rows about ``model`` on these GPUs whose FP16 reading is impossible:
    which configuration the row must mean (``quant``: the plan's baseline, for context)."""
    notes = []
    for row in GUIDE_ROWS:
        if row.gpu not in gpu_keys or load_model(row.model).name != model.name:
            continue
        implied = implied_configuration(row)
        if implied is None or implied.quant == STATED_QUANT:
            continue
        note = implied.stated.note.split(": no memory is left")[0]
        why = implied.stated.limited_by + (f": {note}" if note else "")
        notes.append(
            f"the cost guide's row '{row.text()}' cannot be FP16 on one GPU ({why}); it must "
            f"mean {implied.quant} weights: {implied.speed.users} users, "
            f"{implied.speed.total_tok_s:,.0f} tok/s here"
            + (f" (this plan's baseline is {quant})" if quant != STATED_QUANT else "")
        )
    return notes
