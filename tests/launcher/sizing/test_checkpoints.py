"""The checkpoint catalog: every quantization of a snapshot maps to a checkpoint that runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from launcher.config_files import MODELS_DIR
from launcher.errors import InvalidInput, NoCheckpointError
from launcher.sizing.checkpoints import (
    NEEDS_QUANTIZED_WEIGHTS,
    Checkpoint,
    checkpoint_for,
    load_catalog,
    quantization_facts,
    served_checkpoint,
)
from launcher.sizing.fit_report import describe_checkpoint
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
PREQUANTIZED = [entry for entry in ENTRIES if entry[2].prequantized]
UNVERIFIED = [
    f"{model}/{quant}" for model, quant, checkpoint in PREQUANTIZED if not checkpoint.verified
]


PREQUANTIZED_IDS = [
    f"{model}-{quant}-{'config-checked' if checkpoint.verified else 'config-not-checked'}"
    for model, quant, checkpoint in PREQUANTIZED
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
    # compressed-tensors says which scheme; other methods have none
    assert (checkpoint.scheme is not None) == (checkpoint.method == "compressed-tensors")
    # the repository name leads back to the snapshot it is sized with
    assert model in snapshot_candidates(checkpoint.repo) or quant in ("bf16", "fp16")


@pytest.mark.parametrize(("model", "quant", "checkpoint"), PREQUANTIZED, ids=PREQUANTIZED_IDS)
def test_facts_match_the_checkpoints_own_config_json(model, quant, checkpoint) -> None:
    if not checkpoint.verified:
        # nothing to check it against: the catalog says so, and so does `vkit plan`
        assert checkpoint.config is None
        assert describe_checkpoint(checkpoint).endswith("(config not checked)")
        return
    config = json.loads((CONFIGS / checkpoint.config).read_text())
    facts = quantization_facts(config)
    assert (facts.method, facts.bits, facts.group_size, facts.scheme) == (
        checkpoint.method,
        checkpoint.bits,
        checkpoint.group_size,
        checkpoint.scheme,
    )
    # ... and its shape is the snapshot's, so sizing the snapshot sizes this checkpoint
    shape = ModelSpec.from_hf_config(config, name=model)
    snapshot = load_model(model)
    for field in SHAPE_FIELDS:
        assert getattr(shape, field) == getattr(snapshot, field), field
    assert "not checked" not in describe_checkpoint(checkpoint)


def test_every_kept_config_is_named_by_an_entry_and_has_a_source() -> None:
    named = {c.config for _, _, c in ENTRIES if c.config}
    kept = {path.name for path in CONFIGS.glob("*.json")}
    assert named == kept
    sources = (CONFIGS / "SOURCES.md").read_text()
    assert all(f"`{name}`" in sources for name in kept)


def test_how_many_entries_are_checked_against_a_config() -> None:
    checked = {(m, q) for m, q, c in PREQUANTIZED if c.verified}
    assert ("llama-3.1-70b", "awq") in checked
    # the rest rests on model cards; this count is the catalog's debt, reported here
    assert len(UNVERIFIED) == 37, (
        f"{len(UNVERIFIED)} of {len(PREQUANTIZED)} pre-quantized entries are not checked "
        f"against a config.json: {', '.join(UNVERIFIED)}"
    )


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"repo": "org/m-AWQ", "method": "awq", "bits": 4, "group_size": 128}, "verified: false"),
        ({"repo": "org/m-AWQ", "method": "awq", "config": "x.json", "verified": False}, "says"),
    ],
)
def test_a_pre_quantized_entry_names_its_config_or_says_it_has_none(entry, complaint) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Checkpoint.model_validate(entry)
    assert Checkpoint.model_validate({"repo": "org/m"}).verified  # 16-bit: nothing to check


def test_compressed_tensors_facts_come_from_the_weights_scheme() -> None:
    def group(weights: dict | None, acts: dict | None) -> dict:
        return {"quantization_config": {"config_groups": {"group_0": {
            "targets": ["Linear"], "weights": weights, "input_activations": acts,
        }}, "quant_method": "compressed-tensors"}}  # fmt: skip

    fp8 = {"num_bits": 8, "type": "float", "strategy": "tensor", "group_size": None}
    int8 = {"num_bits": 8, "type": "int", "strategy": "channel", "group_size": None}
    int4 = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}
    assert quantization_facts(group(fp8, fp8)).scheme == "FP8"
    assert quantization_facts(group(int8, {**int8, "strategy": "token"})).scheme == "W8A8"
    w4a16 = quantization_facts(group(int4, None))
    assert (w4a16.bits, w4a16.group_size, w4a16.scheme) == (4, 128, "W4A16")
    # activations alone (a config cut short before its weights) state neither bits nor scheme
    partial = quantization_facts(group(None, fp8))
    assert (partial.method, partial.bits, partial.scheme) == ("compressed-tensors", None, None)


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
