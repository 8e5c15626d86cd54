"""Prompt counting: the tokenizer-backed counter against transformers on the tiny model,
the byte bound's upper-bound property (hypothesis) on the tiny and other tokenizer
families, the Unicode fact its proof stands on, and the wiring into the gateway.

The reference counts come from transformers (``apply_chat_template``, ``tokenizer(...)``),
which is what vLLM runs; ``test_engine_prompt_count.py`` checks against vLLM itself.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from gateway.app import create_app
from gateway.body import estimate_prompt_tokens, parse_body
from gateway.chat_template import ChatTemplate, ChatTemplateError
from gateway.deadline import Deadline
from gateway.prompt_tokens import (
    ByteBound,
    ModelCounters,
    TokenizerCounter,
    build_prompt_counter,
)
from gateway.settings import GatewaySettings, TokenizerSettings
from gateway.utf8_length import text_bytes
from tests.gateway.doubles import DictKeyStore, Key, RecordingLimiter

MODEL = "tiny-llama"
SNIPPETS = [
    "hi", " ", "\n", "Tell me a story.", "你好，世界", "こんにちは", "🎉🚀👩‍👩‍👧", "émoji café",
    "<|user|>", "</s>", "<s>", "<|assistant|>", "ﷺ", "क़", "Å", "ﬁ", "1234567890", "{\"a\": [1]}",
]  # fmt: skip
TEXT = st.lists(
    st.one_of(
        st.sampled_from(SNIPPETS),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    ),
    max_size=8,
).map("".join)
ROLES = st.sampled_from(["system", "user", "assistant"])
PARTS = st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), min_size=1, max_size=3)
MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": st.one_of(TEXT, PARTS)})
MESSAGES = st.lists(MESSAGE, min_size=1, max_size=6)
PROMPT = st.one_of(
    TEXT.filter(bool),
    st.lists(TEXT.filter(bool), min_size=1, max_size=4),
    st.lists(st.integers(0, 511), min_size=1, max_size=30),
    st.lists(st.lists(st.integers(0, 511), min_size=1, max_size=10), min_size=1, max_size=3),
)
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def counter(tiny_model_dir: Path) -> TokenizerCounter:
    return TokenizerCounter.load(tiny_model_dir, TokenizerSettings())


def joined(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as vLLM hands a string-content template: text parts joined by newlines."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "\n".join(part["text"] for part in content)
        out.append({**m, "content": content})
    return out


def reference_chat(hf: Any, messages: list[dict[str, Any]], **kwargs: Any) -> int:
    kwargs.setdefault("add_generation_prompt", True)
    ids = hf.apply_chat_template(joined(messages), tokenize=True, return_dict=False, **kwargs)
    return len(ids)


def reference_prompt(hf: Any, prompt: Any) -> int:
    if isinstance(prompt, str):
        return len(hf(prompt)["input_ids"])
    if all(isinstance(p, int) for p in prompt):
        return len(prompt)
    return sum(reference_prompt(hf, p) for p in prompt)


# -- the fallback: an upper bound ---------------------------------------------------------


@SLOW
@given(messages=MESSAGES)
def test_fallback_never_counts_a_chat_below_the_tiny_tokenizer(
    hf_tokenizer: Any, messages: list[dict[str, Any]]
) -> None:
    real = reference_chat(hf_tokenizer, messages)
    assert estimate_prompt_tokens({"model": MODEL, "messages": messages}) >= real


@SLOW
@given(prompt=PROMPT)
def test_fallback_never_counts_a_prompt_below_the_tiny_tokenizer(
    hf_tokenizer: Any, prompt: Any
) -> None:
    real = reference_prompt(hf_tokenizer, prompt)
    assert estimate_prompt_tokens({"model": MODEL, "prompt": prompt}) >= real
    assert estimate_prompt_tokens({"model": MODEL, "input": prompt}) >= real


def _train(tokenizer: Tokenizer, trainer: Any) -> Tokenizer:
    corpus = [*SNIPPETS, "The quick brown fox jumps over the lazy dog. " * 3, "a b c d e f"]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def sentencepiece_like() -> Tokenizer:
    """Llama 2 / Mistral style: "▁" for spaces, a prepended "▁", BPE with byte fallback,
    a post-processor adding BOS and EOS."""
    from tokenizers import processors

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokenizer = _train(tokenizer, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return tokenizer


def byte_level_nfc() -> Tokenizer:
    """Qwen style: NFC, byte-level BPE."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    return _train(tokenizer, trainer)


FAMILIES = {"sentencepiece": sentencepiece_like(), "byte-level-nfc": byte_level_nfc()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_fallback_bounds_other_tokenizer_families(family: str, text: str) -> None:
    tokenizer = FAMILIES[family]
    real = len(tokenizer.encode(text, add_special_tokens=True))
    assert estimate_prompt_tokens({"prompt": text}) >= real
    assert text_bytes(text) + 3 >= real


def test_every_composite_is_no_longer_in_utf8_than_the_pair_it_composes() -> None:
    """The fact step 2 of ByteBound's proof needs: NFC/NFKC never outgrow NFD/NFKD."""
    for code in range(sys.maxunicode + 1):
        mapping = unicodedata.decomposition(chr(code))
        if not mapping or mapping.startswith("<"):
            continue
        parts = [chr(int(part, 16)) for part in mapping.split()]
        if len(parts) == 2:
            assert len(chr(code).encode()) <= sum(len(p.encode()) for p in parts), hex(code)
    for syllable in map(chr, range(0xAC00, 0xD7A4)):  # Hangul composes by algorithm
        assert len(syllable.encode()) <= len(unicodedata.normalize("NFD", syllable).encode())


# -- the tokenizer-backed counter: exact ---------------------------------------------------


@SLOW
@given(messages=MESSAGES)
def test_chat_count_is_what_transformers_counts(
    counter: TokenizerCounter, hf_tokenizer: Any, messages: list[dict[str, Any]]
) -> None:
    assert counter.count({"model": MODEL, "messages": messages}) == reference_chat(
        hf_tokenizer, messages
    )


@SLOW
@given(prompt=PROMPT)
def test_prompt_count_is_what_transformers_counts(
    counter: TokenizerCounter, hf_tokenizer: Any, prompt: Any
) -> None:
    assert counter.count({"model": MODEL, "prompt": prompt}) == reference_prompt(
        hf_tokenizer, prompt
    )


def test_chat_options_change_the_count_as_in_transformers(
    counter: TokenizerCounter, hf_tokenizer: Any
) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Once"}]
    plain = counter.count({"messages": messages, "add_generation_prompt": False})
    assert plain == reference_chat(hf_tokenizer, messages, add_generation_prompt=False)
    cont = {"messages": messages, "add_generation_prompt": False, "continue_final_message": True}
    assert counter.count(cont) == reference_chat(
        hf_tokenizer, messages, add_generation_prompt=False, continue_final_message=True
    )
    assert counter.count(cont) < plain  # no "</s>\n" after the open message


def test_long_texts_get_the_bound_of_the_rendered_text(tiny_model_dir: Path) -> None:
    capped = TokenizerCounter.load(tiny_model_dir, TokenizerSettings(max_tokenized_chars=10))
    exact = TokenizerCounter.load(tiny_model_dir, TokenizerSettings())
    chat = {"messages": [{"role": "user", "content": "Tell me a story. " * 20}]}
    assert exact.count(chat) < capped.count(chat) < ByteBound().count(chat)
    prompt = {"prompt": "Tell me a story. " * 20}
    assert capped.count(prompt) >= exact.count(prompt)


def test_a_lone_surrogate_is_counted_by_its_bound(counter: TokenizerCounter) -> None:
    data = json.loads(
        '{"prompt": "a\\ud800b", "messages": [{"role": "user", "content": "\\udfff"}]}'
    )
    assert counter.count(data) >= 3
    assert counter.count({"prompt": data["prompt"]}) == text_bytes("a\ud800b") + 1 + 2


def test_a_template_that_rejects_the_messages_falls_back_to_the_bound(
    counter: TokenizerCounter,
) -> None:
    strict = ChatTemplate.from_sources(
        {"default": "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}"
         "{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"}
    )  # fmt: skip
    data = {"messages": [{"role": "assistant", "content": "x"}]}
    with pytest.raises(ChatTemplateError, match="user first"):
        strict.render(data)
    rejecting = TokenizerCounter(counter.tokenizer, strict)
    assert rejecting.count(data) == ByteBound().count(data)


def test_a_template_that_loops_over_parts_gets_them_as_parts() -> None:
    template = ChatTemplate.from_sources(
        {"default": "{% for m in messages %}{% for p in m['content'] %}[{{ p.text }}]"
         "{% endfor %}{% endfor %}{{ bos_token }}"},
        {"bos_token": "<s>"},
    )  # fmt: skip
    data = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}]}
    assert template.render(data) == "[a][b]<s>"


def test_named_templates_use_tool_use_only_with_tools(tmp_path: Path) -> None:
    named = [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "tools"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    template = ChatTemplate.load(tmp_path, {"chat_template": named})
    assert template is not None
    messages = [{"role": "user", "content": "x"}]
    tool = {"type": "function", "function": {"name": "f"}}
    assert template.render({"messages": messages}) == "plain"
    assert template.render({"messages": messages, "tools": [tool]}) == "tools"


# -- building from settings, and the wiring -------------------------------------------------


def test_settings_name_a_directory_or_a_hub_cache_entry(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_model_dir, snapshot, ignore=shutil.ignore_patterns("*.safetensors"))
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    tokenizers = TokenizerSettings(
        models={MODEL: str(tiny_model_dir), "hub": "acme/tiny", "gone": str(tmp_path / "none")},
        hf_cache=tmp_path / "hub",
    )
    with caplog.at_level(logging.WARNING, logger="vkit.gateway"):
        built = build_prompt_counter(tokenizers)
    assert isinstance(built, ModelCounters)
    assert sorted(built.counters) == ["gone", "hub", MODEL]
    assert "gone" in caplog.text
    chat = [{"role": "user", "content": "Tell me a story."}]
    exact = built.counters[MODEL].count({"messages": chat})
    for model in (MODEL, "hub"):
        assert built.count({"model": model, "messages": chat}) == exact
    bound = ByteBound().count({"messages": chat})
    assert built.count({"model": "gone", "messages": chat}) == bound > exact
    assert build_prompt_counter(TokenizerSettings()) == ByteBound()


def test_a_tokenizer_that_appears_after_start_is_used_once_found(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The replicas download the model after the gateway started: its counter looks again
    (off the event loop, at most every retry interval) and uses the tokenizer once there."""
    now = [0.0]
    loads: list[str] = []
    tokenizers = TokenizerSettings(models={"late": "acme/late"}, hf_cache=tmp_path / "hub")

    def spawn(job: Callable[[], None]) -> None:
        loads.append("try")
        job()

    built = build_prompt_counter(tokenizers, clock=lambda: now[0], spawn=spawn, retry_s=30)
    chat = {"model": "late", "messages": [{"role": "user", "content": "Tell me a story."}]}
    bound = ByteBound().count(chat)
    assert built.count(chat) == bound  # not there at start: the bound
    assert loads == []
    repo = tmp_path / "hub" / "models--acme--late"
    shutil.copytree(
        tiny_model_dir, repo / "snapshots" / "s1", ignore=shutil.ignore_patterns("*.safetensors")
    )
    now[0] = 29.0
    assert built.count(chat) == bound  # within the interval: no new look
    assert loads == []
    now[0] = 30.0
    exact = TokenizerCounter.load(tiny_model_dir, tokenizers).count(chat)
    assert built.count(chat) == bound  # this request still the bound; the look loads it
    assert loads == ["try"]
    assert built.count(chat) == exact < bound
    now[0] = 1000.0
    built.count(chat)
    assert loads == ["try"]  # loaded: never looks again


class FixedCount:
    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.seen: list[Mapping[str, Any]] = []

    def count(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> int:
        self.seen.append(data)
        return self.tokens


def test_parse_body_takes_its_count_from_the_counter() -> None:
    fixed = FixedCount(1234)
    body = parse_body(b'{"model": "m", "prompt": "hi"}', counter=fixed)
    assert body.prompt_tokens_estimate == 1234
    assert fixed.seen == [{"model": "m", "prompt": "hi"}]
    assert parse_body(b'{"model": "m", "prompt": "hi"}').prompt_tokens_estimate == 2 + 3


async def test_the_gateway_reserves_what_its_counter_counts() -> None:
    limiter = RecordingLimiter()
    app = create_app(
        GatewaySettings(upstreams=["http://127.0.0.1:9"]),
        key_store=DictKeyStore({"s": Key("alice")}),
        limiter=limiter,
        prompt_counter=FixedCount(1234),
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),  # closes the upstream clients at the end
        httpx.AsyncClient(transport=transport, base_url="http://gw") as client,
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
        await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer s"})
    assert [lease.reserved for lease in limiter.leases] == [1234 + 6]
