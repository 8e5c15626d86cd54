"""Model snapshots: parameter counts and KV bytes per token from config.json alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.config_files import MODELS_DIR
from launcher.errors import UnknownModelError
from launcher.sizing.models import MODEL_ALIASES, ModelSpec, load_model

# Published sizes (billions) of the snapshot models.
PUBLISHED_BILLIONS = {
    "llama-3.1-8b": 8.03,
    "llama-3.1-70b": 70.6,
    "qwen2.5-7b": 7.62,
    "qwen2.5-14b": 14.8,
    "mistral-7b-v0.3": 7.25,
    "qwen3-8b": 8.19,
    "qwen3-4b": 4.02,
    "gemma-2-9b": 9.24,
    # the 2026 catalog: each model card's figure (Hugging Face's safetensors count where the
    # card rounds: Qwen2.5-32B's card says 32.5B, its safetensors hold 32.8B)
    "qwen3-14b": 14.8,
    "qwen3-32b": 32.8,
    "qwen2.5-32b": 32.76,
    "qwen2.5-72b": 72.7,
    "llama-3.3-70b": 70.6,
    "mistral-small-24b-2501": 23.57,
    # 27.4B on the card includes the 0.4B SigLIP vision tower; the kit sizes the text decoder
    "gemma-3-27b": 27.0,
}

# docs/memory.md#model-shapes table: KiB of bf16 KV per token.
KIB_PER_TOKEN = {
    "llama-3.1-8b": 128,
    "llama-3.1-70b": 320,
    "qwen2.5-7b": 56,
    "qwen2.5-14b": 192,
    "mistral-7b-v0.3": 128,
    "qwen3-8b": 144,
    "qwen3-4b": 144,
    "gemma-2-9b": 336,
    "qwen3-14b": 160,
    "qwen3-32b": 256,
    "qwen2.5-32b": 256,
    "qwen2.5-72b": 320,
    "llama-3.3-70b": 320,
    "mistral-small-24b-2501": 160,
    "gemma-3-27b": 496,
}


@pytest.mark.parametrize(("name", "billions"), sorted(PUBLISHED_BILLIONS.items()))
def test_parameter_count_matches_published_size(name: str, billions: float) -> None:
    count = load_model(name).parameter_count
    assert count / 1e9 == pytest.approx(billions, rel=0.005)


@pytest.mark.parametrize(("name", "kib"), sorted(KIB_PER_TOKEN.items()))
def test_kv_bytes_per_token_matches_reference_table(name: str, kib: int) -> None:
    assert load_model(name).kv_bytes_per_token() == kib * 1024


def test_fp8_kv_and_tensor_parallel_shrink_kv_per_token() -> None:
    spec = load_model("llama-3.1-8b")
    assert spec.kv_bytes_per_token("fp8") == 64 * 1024
    assert spec.kv_bytes_per_token(tensor_parallel=2) == 64 * 1024
    # kv heads per GPU never drop below one: 8 kv heads over TP=16 is still 1 head.
    assert spec.kv_bytes_per_token(tensor_parallel=16) == spec.kv_bytes_per_token() // 8


def test_head_dim_falls_back_to_hidden_over_heads() -> None:
    config = {
        "num_hidden_layers": 2,
        "hidden_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 256,
        "vocab_size": 512,
    }
    spec = ModelSpec.from_hf_config(config, name="tiny")
    assert spec.head_dim == 64
    assert spec.tie_word_embeddings  # transformers' default when absent
    assert spec.kv_bytes_per_token() == 2 * 2 * 1 * 64 * 2


def test_aliases_and_13b_snapshot() -> None:
    assert set(MODEL_ALIASES) >= {"7b", "8b", "13b", "14b", "70b"}
    spec = load_model("13b")
    assert spec.name == "llama-2-13b"
    assert (spec.num_hidden_layers, spec.num_key_value_heads, spec.max_position_embeddings) == (
        40,
        40,
        4096,
    )
    assert spec.parameter_count / 1e9 == pytest.approx(13.0, rel=0.01)


def test_local_directory_is_read(tmp_path: Path) -> None:
    source = MODELS_DIR / "qwen3-4b" / "config.json"
    (tmp_path / "config.json").write_text(source.read_text())
    assert load_model(str(tmp_path)).kv_bytes_per_token() == 144 * 1024


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(UnknownModelError) as info:
        load_model("gpt-5")
    assert "llama-3.1-8b" in str(info.value)
    assert "\n" not in str(info.value)


def test_broken_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UnknownModelError, match="not a usable model config"):
        load_model(str(tmp_path))
