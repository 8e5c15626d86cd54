"""Model shapes from a Hugging Face ``config.json``: parameter count and KV bytes per token.

    >>> spec = load_model("8b")                      # alias of llama-3.1-8b
    >>> round(spec.parameter_count / 1e9, 2), spec.kv_bytes_per_token() // 1024
    (8.03, 128)

The parameter count is computed from the shape (embeddings + attention + MLP + norms +
lm_head unless tied), never typed in. Snapshots of the common models' config.json live in
``configs/models/<name>/config.json``; a local model directory works the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from launcher.config_files import MODELS_DIR
from launcher.errors import UnknownModelError

KvDtype = Literal["auto", "fp8"]

MODEL_ALIASES: dict[str, str] = {
    "7b": "mistral-7b-v0.3",
    "8b": "llama-3.1-8b",
    "13b": "llama-2-13b",
    "14b": "qwen2.5-14b",
    "70b": "llama-3.1-70b",
    "24b": "mistral-small-24b-2501",
    "mistral-small-24b": "mistral-small-24b-2501",
    "27b": "gemma-3-27b",
    "32b": "qwen3-32b",
    "72b": "qwen2.5-72b",
}

# Architectures whose q/k/v projections carry a bias (Qwen2 has no config flag for it).
_QKV_BIAS_MODEL_TYPES = frozenset({"qwen2"})
# Architectures with q_norm/k_norm (RMSNorm over head_dim) in every layer.
_QK_NORM_MODEL_TYPES = frozenset({"qwen3", "gemma3_text"})
# Gemma-2 has four RMSNorms per layer (pre/post attention, pre/post feed-forward).
_FOUR_NORM_MODEL_TYPES = frozenset({"gemma2", "gemma3_text"})
# Fields a text_config may leave out because transformers' config class defaults them
# (Gemma3TextConfig: vocab_size=262208, max_position_embeddings=131072; gemma-3-27b-it's
# config.json states neither).
_TEXT_CONFIG_DEFAULTS: dict[str, dict[str, int]] = {
    "gemma3_text": {"vocab_size": 262_208, "max_position_embeddings": 131_072},
}


class ModelSpec(BaseModel):
    """The shape of a decoder-only transformer, as far as memory math needs it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model_type: str = "llama"
    num_hidden_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool
    max_position_embeddings: int = Field(gt=0)
    sliding_window: int | None = None
    attention_bias: bool = False

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str) -> ModelSpec:
        """Read the fields of a HF config.json dict (head_dim rule of
        docs/memory.md#head-dimension)."""
        text = config.get("text_config")
        if isinstance(text, dict) and "num_hidden_layers" not in config:
            defaults = _TEXT_CONFIG_DEFAULTS.get(str(text.get("model_type")), {})
            tied = config.get("tie_word_embeddings", True)
            config = {**defaults, **text, "tie_word_embeddings": tied}
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        model_type = str(config.get("model_type", "llama"))
        # head_dim = config.head_dim if present, else hidden_size / num_attention_heads.
        head_dim = config.get("head_dim") or hidden // heads
        # Qwen2 configs carry a sliding_window that is off unless use_sliding_window is true.
        window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
        return cls(
            name=name,
            model_type=model_type,
            num_hidden_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            # transformers' PretrainedConfig defaults tie_word_embeddings to True.
            tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
            max_position_embeddings=int(config.get("max_position_embeddings") or 2048),
            sliding_window=window,
            attention_bias=bool(config.get("attention_bias"))
            or model_type in _QKV_BIAS_MODEL_TYPES,
        )

    @property
    def embedding_parameters(self) -> int:
        """Input embeddings plus the lm_head when it is not tied to them."""
        one = self.vocab_size * self.hidden_size
        return one if self.tie_word_embeddings else 2 * one

    @property
    def linear_parameters(self) -> int:
        """Weights of the per-layer linear projections (what AWQ/GPTQ/FP8 quantize)."""
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_key_value_heads * self.head_dim
        attention = self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size  # gate, up, down
        return self.num_hidden_layers * (attention + mlp)

    @property
    def other_parameters(self) -> int:
        """Norms and biases: small, always kept in 16-bit."""
        norms_per_layer = 4 if self.model_type in _FOUR_NORM_MODEL_TYPES else 2
        per_layer = norms_per_layer * self.hidden_size
        if self.model_type in _QK_NORM_MODEL_TYPES:
            per_layer += 2 * self.head_dim
        if self.attention_bias:
            per_layer += (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
        return self.num_hidden_layers * per_layer + self.hidden_size  # + final norm

    @property
    def parameter_count(self) -> int:
        return self.embedding_parameters + self.linear_parameters + self.other_parameters

    def kv_heads_per_gpu(self, tensor_parallel: int = 1) -> int:
        """KV heads each GPU holds: max(1, kv_heads / TP)
        (docs/memory.md#kv-heads-under-tensor-parallelism)."""
        return max(1, self.num_key_value_heads // tensor_parallel)

    def kv_bytes_per_token(self, kv_dtype: KvDtype = "auto", tensor_parallel: int = 1) -> int:
        """2 x layers x kv_heads(per GPU) x head_dim x bytes/elem (bf16: 2, fp8: 1)."""
        bytes_per_elem = 1 if kv_dtype == "fp8" else 2
        heads = self.kv_heads_per_gpu(tensor_parallel)
        return 2 * self.num_hidden_layers * heads * self.head_dim * bytes_per_elem


def known_models(models_dir: Path = MODELS_DIR) -> list[str]:
    """Snapshot names under ``configs/models`` plus the aliases."""
    names = sorted(p.parent.name for p in models_dir.glob("*/config.json"))
    return names + sorted(MODEL_ALIASES)


def resolve_model_dir(name_or_dir: str, models_dir: Path = MODELS_DIR) -> Path | None:
    """The directory holding config.json for ``name_or_dir``, or None if there is none."""
    as_path = Path(name_or_dir).expanduser()
    if (as_path / "config.json").is_file():
        return as_path
    key = MODEL_ALIASES.get(name_or_dir.lower(), name_or_dir.lower())
    for candidate in snapshot_candidates(key):
        if (models_dir / candidate / "config.json").is_file():
            return models_dir / candidate
    return None


_REPO_SUFFIXES = (
    "-instruct",
    "-it",
    "-chat",
    "-hf",
    "-awq",
    "-gptq",
    "-int4",
    "-int8",
    "-fp8",
    "-w4a16",
    "-w8a8",
    "-bnb-4bit",
    "-quantized.w8a8",
    "-quantized.w4a16",
    "-fp8-dynamic",
)


def snapshot_candidates(repo_id: str) -> list[str]:
    """Snapshot names a repository id may match, most specific first:
    ``hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4`` -> ..., ``llama-3.1-8b``."""
    name = repo_id.lower().split("/")[-1].removeprefix("meta-")
    candidates = [name]
    changed = True
    while changed:
        changed = False
        for suffix in _REPO_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                candidates.append(name)
                changed = True
    # Mistral names the variant mid-name: Mistral-7B-Instruct-v0.3 -> mistral-7b-v0.3
    candidates += [c.replace("-instruct-", "-") for c in candidates if "-instruct-" in c]
    return candidates


def load_model(name_or_dir: str, models_dir: Path = MODELS_DIR) -> ModelSpec:
    """A local model directory's config.json, or a snapshot in ``configs/models``."""
    found = resolve_model_dir(name_or_dir, models_dir)
    if found is None:
        known = ", ".join(known_models(models_dir))
        raise UnknownModelError(
            f"unknown model {name_or_dir!r} (not a directory with config.json); known models: "
            f"{known}"
        )
    try:
        config = json.loads((found / "config.json").read_text())
        return ModelSpec.from_hf_config(config, name=found.name)
    except (ValueError, KeyError, TypeError) as exc:
        raise UnknownModelError(
            f"{found / 'config.json'}: not a usable model config ({exc})"
        ) from exc


# The Hugging Face repositories the snapshots were taken from: what vLLM is given as --model
# when a snapshot name or alias is launched.
HF_REPOS: dict[str, str] = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B-Instruct",
    "llama-2-13b": "meta-llama/Llama-2-13b-chat-hf",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-14b": "Qwen/Qwen2.5-14B-Instruct",
    "mistral-7b-v0.3": "mistralai/Mistral-7B-Instruct-v0.3",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "gemma-2-9b": "google/gemma-2-9b-it",
    "qwen3-14b": "Qwen/Qwen3-14B",
    "qwen3-32b": "Qwen/Qwen3-32B",
    "qwen2.5-32b": "Qwen/Qwen2.5-32B-Instruct",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B-Instruct",
    "llama-3.3-70b": "meta-llama/Llama-3.3-70B-Instruct",
    "mistral-small-24b-2501": "mistralai/Mistral-Small-24B-Instruct-2501",
    "gemma-3-27b": "google/gemma-3-27b-it",
}


def vllm_model_argument(name_or_dir: str, models_dir: Path = MODELS_DIR) -> str:
    """What to pass to vLLM's --model: a snapshot name or alias becomes its Hugging Face
    repository; a local directory or a repository id is passed unchanged."""
    key = MODEL_ALIASES.get(name_or_dir.lower(), name_or_dir.lower())
    if "/" not in name_or_dir and (models_dir / key / "config.json").is_file():
        return HF_REPOS.get(key, name_or_dir)
    return name_or_dir
