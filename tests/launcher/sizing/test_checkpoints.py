"""The checkpoint catalog: every quantization of a snapshot maps to a checkpoint that runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.config_files import MODELS_DIR
from launcher.errors import InvalidInput, NoCheckpointError
from launcher.sizing.checkpoints import (
    NEEDS_QUANTIZED_WEIGHTS,
    checkpoint_for,
    load_catalog,
    quantization_facts,
    served_checkpoint,
)
from launcher.sizing.models import ModelSpec, known_models, load_model, snapshot_candidates

CONFIGS = Path(__file__).parent / "checkpoint_configs"
SHAPE_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
)
CATALOG = load_catalog()
ENTRIES = [
    (model, quant, checkpoint)
    for model, entries in CATALOG.items()
    for quant, checkpoint in entries
    if checkpoint is not None
]


def test_every_catalog_model_is_a_snapshot() -> None:
    assert set(CATALOG) <= set(known_models())
    for model in CATALOG:
        load_model(model)


@pytest.mark.parametrize(("model", "quant", "checkpoint"), ENTRIES)
def test_entries_declare_what_their_quantization_needs(model, quant, checkpoint) -> None:
    if quant in ("bf16", "fp16"):
        assert checkpoint.method == "none"
    else:
        assert checkpoint.prequantized and checkpoint.bits == (4 if quant in ("awq", "gptq") else 8)
    if quant in ("awq", "gptq"):
        assert checkpoint.method == quant and checkpoint.group_size
    # the repository name leads back to the snapshot it is sized with
    assert model in snapshot_candidates(checkpoint.repo) or quant in ("bf16", "fp16")


@pytest.mark.parametrize(
    ("model", "quant", "checkpoint"), [e for e in ENTRIES if e[2].config is not None]
)
def test_facts_match_the_checkpoints_own_config_json(model, quant, checkpoint) -> None:
    config = json.loads((CONFIGS / checkpoint.config).read_text())
    facts = quantization_facts(config)
    assert (facts.method, facts.bits, facts.group_size) == (
        checkpoint.method,
        checkpoint.bits,
        checkpoint.group_size,
    )
    # ... and its shape is the snapshot's, so sizing the snapshot sizes this checkpoint
    shape = ModelSpec.from_hf_config(config, name=model)
    snapshot = load_model(model)
    for field in SHAPE_FIELDS:
        assert getattr(shape, field) == getattr(snapshot, field), field


def test_at_least_the_70b_awq_and_8b_fp8_are_checked_against_a_config() -> None:
    checked = {(m, q) for m, q, c in ENTRIES if c.config}
    assert {("llama-3.1-70b", "awq"), ("llama-3.1-8b", "fp8")} <= checked


def test_a_16_bit_config_has_no_quantization() -> None:
    config = json.loads((MODELS_DIR / "llama-3.1-8b" / "config.json").read_text())
    assert quantization_facts(config).method == "none"


def test_the_issue_70b_awq_case_names_an_awq_checkpoint() -> None:
    checkpoint = served_checkpoint("llama-3.1-70b", "awq")
    assert checkpoint is not None
    assert checkpoint.repo == "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"


def test_fp8_without_a_published_checkpoint_is_quantized_by_vllm_at_load() -> None:
    checkpoint = checkpoint_for("gemma-2-9b", "fp8")
    assert checkpoint is not None and checkpoint.online and not checkpoint.prequantized
    published = checkpoint_for("70b", "fp8")
    assert published is not None and published.prequantized and not published.online


@pytest.mark.parametrize("quant", sorted(NEEDS_QUANTIZED_WEIGHTS))
def test_no_known_checkpoint_says_how_to_make_one(quant) -> None:
    with pytest.raises(NoCheckpointError, match="llm-compressor") as caught:
        served_checkpoint("gemma-2-9b", quant)
    assert isinstance(caught.value, InvalidInput) and "\n" not in str(caught.value)


def test_directories_and_repository_ids_are_the_users_own() -> None:
    assert served_checkpoint("someone/Llama-3.1-70B-AWQ", "awq") is None
    assert served_checkpoint(str(CONFIGS), "awq") is None
    assert served_checkpoint("tiny-llama", "bf16") is None  # a snapshot the catalog skips
