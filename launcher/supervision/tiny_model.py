"""A tiny random Llama that the CPU vLLM engine can serve (docs/cpu-engine.md#the-tiny-model).

    >>> build_tiny_model(Path(".vkit/models/tiny-llama"))   # a few seconds, < 2 MB

Byte-level BPE tokenizer (vocab 512) trained on a few sentences, wrapped in
``PreTrainedTokenizerFast`` with a chat template; ``LlamaConfig`` with head_dim 64 (the CPU
attention kernels reject 16), 2 layers, 2 heads, 1 KV head, max_position_embeddings 2048.
Random weights: the text is gibberish, but token counts, usage and streaming are real.
Idempotent: an existing complete model in ``dest`` is left as it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_MODEL_NAME = "tiny-llama"
VOCAB_SIZE = 512
MAX_POSITION_EMBEDDINGS = 2048

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_CORPUS = [
    "vkit deploys vLLM behind a gateway with keys, limits and metrics.",
    "The quick brown fox jumps over the lazy dog while the engine streams tokens.",
    "Hello! How can I help you today? Tell me a short story about a GPU.",
    "Continuous batching keeps the accelerator busy; the KV cache holds the context.",
    "system user assistant: answer briefly and politely, in plain English.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 { } [ ] ( ) , . ; : ' \" ? ! - _ / \\ @ # $ % & *",
]
_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
_REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def is_built(dest: Path) -> bool:
    return all((dest / name).is_file() for name in _REQUIRED_FILES) and any(
        dest.glob("*.safetensors")
    )


def _build_tokenizer(dest: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(dest)


def _build_weights(dest: Path, vocab_size: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.bfloat16()  # in place
    hf_logging.disable_progress_bar()  # keep a launcher's stdout clean
    try:
        model.save_pretrained(dest)
    finally:
        hf_logging.enable_progress_bar()


def _make_readable(directory: Path) -> None:
    """mkdtemp makes 0700 dirs: let other users (and containers) read the model."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def build_tiny_model(dest: Path) -> Path:
    """Write the tiny model into ``dest`` unless it is already there; return ``dest``."""
    dest = Path(dest)
    if is_built(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tiny-", dir=dest.parent))
    try:
        _build_tokenizer(work)
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(work))
        _build_weights(work, max(vocab, VOCAB_SIZE))
        if is_built(dest):  # built concurrently by another process meanwhile
            return dest
        if dest.exists():
            shutil.rmtree(dest)
        _make_readable(work)
        os.replace(work, dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dest
