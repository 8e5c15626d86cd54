"""Runnable checkpoints: which Hugging Face repository serves a model at a quantization.

    >>> checkpoint_for("llama-3.1-70b", "awq").repo
    'hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4'
    >>> checkpoint_for("mistral-7b-v0.3", "awq") is None      # none published that we know
    True
    >>> checkpoint_for("gemma-2-9b", "fp8").online             # vLLM quantizes at load
    True

The catalog is ``configs/checkpoints.yaml``. AWQ/GPTQ/INT8 weights must come quantized (vLLM
reads the method from the checkpoint's config.json); FP8 can be done by vLLM at load from the
16-bit checkpoint (``--quantization fp8``), so FP8 always has an answer. When no checkpoint is
known, :func:`how_to_make` names the llm-compressor recipe that makes one.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from launcher.config_files import CONFIG_DIR, MODELS_DIR
from launcher.errors import NoCheckpointError
from launcher.sizing.memory import Quantization
from launcher.sizing.models import MODEL_ALIASES

CHECKPOINTS_FILE = CONFIG_DIR / "checkpoints.yaml"

# Quantizations vLLM cannot apply at load: the weights must come quantized.
NEEDS_QUANTIZED_WEIGHTS: frozenset[str] = frozenset({"awq", "gptq", "int8"})

Method = Literal["none", "awq", "gptq", "compressed-tensors", "fp8"]

# llm-compressor schemes (vLLM's quantization library) that produce each quantization.
_RECIPES: dict[str, str] = {
    "awq": 'AWQModifier(scheme="W4A16_ASYM", targets="Linear", ignore=["lm_head"])',
    "gptq": 'GPTQModifier(scheme="W4A16", targets="Linear", ignore=["lm_head"])',
    "int8": 'GPTQModifier(scheme="W8A8", targets="Linear", ignore=["lm_head"])',
    "fp8": 'QuantizationModifier(scheme="FP8_DYNAMIC", targets="Linear", ignore=["lm_head"])',
}


class Checkpoint(BaseModel):
    """One repository and the quantization its config.json declares.

    ``online``: a 16-bit checkpoint that vLLM quantizes while loading (``--quantization fp8``);
    ``scheme``: for compressed-tensors, what its config groups quantize (``FP8``, ``W8A8``,
    ``W4A16``); ``config``: the config.json (under the tests' data) its facts were checked
    against. A pre-quantized entry names one, or says ``verified: false`` (its facts come from
    the model card and nothing here checked them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    method: Method = "none"
    bits: int | None = Field(default=None, ge=2, le=16)
    group_size: int | None = Field(default=None, ge=1)
    scheme: str | None = None
    config: str | None = None
    verified: bool = True
    online: bool = False

    @model_validator(mode="after")
    def _checked_or_says_not(self) -> Checkpoint:
        if self.config is not None and not self.verified:
            raise ValueError(f"{self.repo}: names a config.json and says verified: false")
        if self.prequantized and self.config is None and self.verified:
            raise ValueError(
                f"{self.repo}: pre-quantized, names no config.json its facts were checked "
                f"against; add one (config: ...) or say verified: false"
            )
        return self

    @property
    def prequantized(self) -> bool:
        return self.method != "none"


class ModelCheckpoints(BaseModel):
    """The checkpoints of one model snapshot, by quantization (bf16 is required)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bf16: Checkpoint
    fp16: Checkpoint | None = None
    fp8: Checkpoint | None = None
    int8: Checkpoint | None = None
    awq: Checkpoint | None = None
    gptq: Checkpoint | None = None


def load_catalog(path: Path | None = None) -> dict[str, ModelCheckpoints]:
    """``configs/checkpoints.yaml`` (or ``path``), validated, keyed by snapshot name."""
    return dict(_load_cached(Path(path or CHECKPOINTS_FILE).resolve()))


@cache
def _load_cached(path: Path) -> tuple[tuple[str, ModelCheckpoints], ...]:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: expected a mapping of model -> quantization -> checkpoint")
    return tuple((name, ModelCheckpoints.model_validate(entry)) for name, entry in raw.items())


def snapshot_key(model: str) -> str:
    """``70b`` -> ``llama-3.1-70b``; a snapshot name stays as it is."""
    return MODEL_ALIASES.get(model.lower(), model.lower())


def checkpoint_for(
    model: str, quant: Quantization, catalog: dict[str, ModelCheckpoints] | None = None
) -> Checkpoint | None:
    """The checkpoint that serves ``model`` (snapshot name or alias) at ``quant``, or None.

    bf16 and fp16 share the 16-bit checkpoint; FP8 without a published checkpoint is the
    16-bit one, quantized by vLLM at load. None for a model the catalog does not list.
    """
    entries = (catalog if catalog is not None else load_catalog()).get(snapshot_key(model))
    if entries is None:
        return None
    if quant in ("bf16", "fp16"):
        return entries.fp16 or entries.bf16
    found: Checkpoint | None = getattr(entries, quant)
    if found is None and quant == "fp8":
        return entries.bf16.model_copy(update={"online": True})
    return found


def served_checkpoint(
    name_or_dir: str, quant: Quantization, models_dir: Path = MODELS_DIR
) -> Checkpoint | None:
    """What ``vkit launch``/``plan`` give vLLM as ``--model`` for a snapshot name or alias.

    A directory or a repository id is the user's own checkpoint: None (passed unchanged). A
    snapshot gets its catalog checkpoint; a quantization that needs quantized weights and has
    no known checkpoint is a :class:`NoCheckpointError` naming how to make one.
    """
    key = snapshot_key(name_or_dir)
    if "/" in name_or_dir or not (models_dir / key / "config.json").is_file():
        return None
    if key in load_catalog():
        return require_checkpoint(key, quant)
    if quant in NEEDS_QUANTIZED_WEIGHTS:
        return require_checkpoint(key, quant)
    return None


def how_to_make(model: str, quant: Quantization) -> str:
    """One line: how to produce a ``quant`` checkpoint of ``model`` with llm-compressor."""
    recipe = _RECIPES.get(quant, _RECIPES["awq"])
    base = checkpoint_for(model, "bf16")
    source = base.repo if base else model
    return (
        f"make one with llm-compressor (pip install llmcompressor): "
        f"oneshot(model={source!r}, recipe={recipe}, dataset=<calibration set>), save it, "
        f"then pass its directory or repository as --model"
    )


def require_checkpoint(model: str, quant: Quantization) -> Checkpoint:
    """:func:`checkpoint_for`, or a :class:`NoCheckpointError` that says how to make one."""
    found = checkpoint_for(model, quant)
    if found is None:
        raise NoCheckpointError(
            f"no {quant} checkpoint of {snapshot_key(model)} is known "
            f"(configs/checkpoints.yaml); {how_to_make(model, quant)}"
        )
    return found


class QuantFacts(BaseModel):
    """What a config.json's ``quantization_config`` says: method, weight bits, group size and,
    for compressed-tensors, the scheme (:func:`compressed_tensors_scheme`)."""

    model_config = ConfigDict(frozen=True)

    method: Method
    bits: int | None = None
    group_size: int | None = None
    scheme: str | None = None


def quantization_facts(config: dict[str, Any]) -> QuantFacts:
    """Read ``quantization_config`` of a Hugging Face config.json (none: a 16-bit checkpoint).

    AWQ/GPTQ/FP8 state ``quant_method``, ``bits``, ``group_size``; compressed-tensors
    (llm-compressor) states ``config_groups`` whose ``weights`` carry ``num_bits`` and
    ``group_size``. Only what the file states is read: a group without ``weights`` gives no
    bits and no scheme.
    """
    quant = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(quant, dict):
        return QuantFacts(method="none")
    groups = quant.get("config_groups")
    if isinstance(groups, dict) and groups:
        group = next(iter(groups.values()))
        weights = group.get("weights") or {}
        return QuantFacts(
            method="compressed-tensors",
            bits=weights.get("num_bits"),
            group_size=weights.get("group_size"),
            scheme=compressed_tensors_scheme(group),
        )
    method = str(quant.get("quant_method", "none")).lower()
    bits = quant.get("bits") or (8 if method == "fp8" else None)
    return QuantFacts(method=method, bits=bits, group_size=quant.get("group_size"))  # type: ignore[arg-type]


def compressed_tensors_scheme(group: dict[str, Any]) -> str | None:
    """llm-compressor's name for a config group: ``FP8`` (8-bit float weights and
    activations), else ``W<bits>A<bits>`` (``W8A8``, ``W4A16``: activations left 16-bit);
    None when the group states no weights."""
    weights = group.get("weights")
    if not isinstance(weights, dict) or weights.get("num_bits") is None:
        return None
    acts = group.get("input_activations")
    act_bits = acts.get("num_bits", 16) if isinstance(acts, dict) else 16
    floats = (
        weights.get("type") == "float" and isinstance(acts, dict) and acts.get("type") == "float"
    )
    if floats and weights["num_bits"] == act_bits == 8:
        return "FP8"
    return f"W{weights['num_bits']}A{act_bits}"
