"""Count a request's prompt tokens before it goes upstream, never fewer than vLLM will.

The limiter reserves this count plus ``max_tokens`` at admission and settles with vLLM's
``usage`` afterwards; a count below the real one lets concurrent requests overshoot a key's
tpm, so every counter here errs high, never low.

- :class:`PromptCounter`: ``count(data, deadline=None) -> int``, the whole request's
  ``usage.prompt_tokens``: chat ``messages``; completions ``prompt`` (a string, strings,
  token ids, lists of token ids: batch prompts are summed) and embeddings ``input`` alike;
  ``n`` does not multiply it. Past the optional :class:`gateway.deadline.Deadline` a counter
  that does real work raises :class:`gateway.deadline.DeadlineExceeded`
  (:mod:`gateway.prompt_budget` then counts the byte bound).
- :class:`TokenizerCounter`: the model's own ``tokenizer.json`` (the ``tokenizers`` library)
  and chat template (:mod:`gateway.chat_template`): what vLLM counts (``bench/prompt_count.py``
  measures it against real vLLM). Beyond ``max_tokenized_chars``, or when the template does
  not render, the byte bound of the text instead.
- :class:`ByteBound`: no tokenizer: a proven upper bound (see its docstring).
- :class:`ModelCounters`: the counter of the body's ``model``, else the fallback.
- :class:`LateTokenizer`: a model whose tokenizer is not there yet (the replicas are still
  downloading it when the gateway starts): the fallback until a look, at most every
  ``retry_s`` and off the event loop, finds and loads it.

:func:`build_prompt_counter` makes one from :class:`gateway.settings.TokenizerSettings`; a
tokenizer that cannot be loaded is logged and its model counted with the fallback until it
can.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.chat_template import (
    ChatTemplate,
    ChatTemplateError,
    read_tokenizer_config,
    text_parts,
    tool_call_for_template,
)
from gateway.deadline import Deadline
from gateway.settings import TokenizerSettings
from gateway.utf8_length import json_bytes, text_bytes

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger("vkit.gateway")

PREPENDED_PER_TEXT = 1  # SentencePiece's dummy-prefix "▁", once per tokenized text
SPECIALS_PER_TEXT = 2  # BOS and EOS, added by a post-processor


class PromptCounter(Protocol):
    def count(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> int:
        """The request's prompt tokens (at least 1); past ``deadline``,
        :class:`~gateway.deadline.DeadlineExceeded`."""
        ...


class TokenizerUnavailable(Exception):
    """No usable tokenizer.json where the settings point."""


@dataclass(frozen=True, slots=True)
class ByteBound:
    """An upper bound on the prompt tokens of a request, without its model's tokenizer.

    A plain text counts ``B(text) + 3``, where ``B`` is its UTF-8 length, the most over the
    text as given and its NFD and NFKD forms (:func:`gateway.utf8_length.text_bytes`); token
    ids count as they are. Proof that a tokenizer of the families vLLM serves makes no more tokens:

    1. Added (special) tokens are split out of the text first; each stands for its own
       text, at least 2 bytes.
    2. Each other segment is normalized: not at all, NFC or NFKC (Qwen), or SentencePiece's
       space-to-"▁" and a prepended "▁" (Llama 2, Mistral). Decomposing (NFD, NFKD) maps
       each code point on its own, so its length adds up over segments; composing (NFC,
       NFKC) merges a pair into a composite no longer in UTF-8 than the pair (checked for
       all of Unicode by ``tests/gateway/test_prompt_tokens.py``), so no normal form of a
       segment is longer than ``B`` of it. "▁" for a space keeps the count of characters;
       the prepended "▁" is one more symbol per segment: the ``+1`` covers the first, the
       2-byte special token before each later one covers the rest.
    3. Byte-level BPE (GPT-2, Llama 3, Qwen, Mistral's Tekken) starts from one symbol per
       byte and merging only lowers the count; SentencePiece BPE or Unigram with byte
       fallback (Llama 2, Mistral, Gemma) from one per character, or per byte of a character
       it has no piece for. Either way: no more tokens than bytes.
    4. A post-processor adds at most BOS and EOS: ``+2``.

    A chat request's template is not known here. What the request gives the template is
    counted as above (roles, names, contents -- a part each, plus its joining newline --;
    tool calls, ``tools``, ``documents`` and ``chat_template_kwargs`` as JSON indented by 4,
    no shorter than ``tojson`` renders them); the template's own text (role headers,
    separators, generation prompt, a default system prompt) is assumed to be at most
    ``message_overhead`` tokens per message plus ``request_overhead`` per request: the
    templates of Llama 3.x, Qwen 2.5/3, Mistral, Gemma 2 and the tiny model need under
    half of the defaults. That part is an assumption, not a proof: a template with a long
    default system prompt needs ``tokenizers.request_overhead`` raised, or better its
    tokenizer configured (:class:`TokenizerCounter` applies the bound to the rendered text,
    where the proof is complete). Images and audio are not counted.
    """

    message_overhead: int = 8
    request_overhead: int = 64

    @classmethod
    def of(cls, settings: TokenizerSettings) -> ByteBound:
        return cls(settings.message_overhead, settings.request_overhead)

    def count(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> int:
        """The bound; ``deadline`` is not looked at: the work is a pass over the body's
        texts in C (UTF-8 length, normalization) and over its messages and JSON containers
        in Python, 0.1-0.4 s for the worst 4 MiB bodies measured (docs/gateway-cost.md), in
        short steps that leave the GIL to other threads."""
        # Loops, not sum() over generators, and absent fields skipped before any call: it
        # runs for every request (a one-message chat body 3.1 -> 0.9 us, timeit here).
        total = 0
        messages = data.get("messages")
        if isinstance(messages, list):
            total += self.request_overhead
            for message in messages:
                total += self.message_overhead + _message_bytes(message)
            for name in ("tools", "documents", "chat_template_kwargs"):
                value = data.get(name)
                if value is not None:  # json_bytes(None) is 0
                    total += json_bytes(value)
            if data.get("add_special_tokens") is True:
                total += SPECIALS_PER_TEXT
        for name in ("prompt", "input"):
            value = data.get(name)
            if value is not None:  # _prompts(None) yields nothing
                for prompt in _prompts(value):
                    total += _bound_prompt(prompt)
        return total if total > 1 else 1


def _message_bytes(message: object) -> int:
    if not isinstance(message, dict):
        return 0
    total = 0
    for key, value in message.items():
        if key == "content":
            for part in text_parts(value):
                total += text_bytes(part) + 1  # + the joining "\n"
        elif isinstance(value, str):
            total += text_bytes(value)
        elif key == "tool_calls" and isinstance(value, list):
            total += json_bytes([tool_call_for_template(call) for call in value])
        else:
            total += json_bytes(value)
    return total


def _prompts(value: object) -> Iterable[str | list[int]]:
    """The separate prompts of a ``prompt``/``input``: strings and token-id lists (by their
    first item: vLLM rejects a list that mixes kinds, so its count does not matter)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list) and value:
        if _is_token(value[0]):
            yield value
            return
        for item in value:
            if isinstance(item, str | list):
                yield item


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bound_prompt(prompt: str | list[int]) -> int:
    if isinstance(prompt, list):
        return len(prompt)
    return text_bytes(prompt) + PREPENDED_PER_TEXT + SPECIALS_PER_TEXT


@dataclass(frozen=True, slots=True)
class TokenizerCounter:
    """A model's tokenizer and chat template: the count vLLM will report.

    ``missing_specials``: the BOS/EOS that ``tokenizer_config.json`` asks for
    (``add_bos_token``) but the post-processor of ``tokenizer.json`` does not add.
    """

    tokenizer: Tokenizer = field(repr=False)
    template: ChatTemplate | None
    fallback: ByteBound = field(default_factory=ByteBound)
    max_tokenized_chars: int = 65536
    missing_specials: int = 0

    def count(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> int:
        """The exact count; ``deadline`` is looked at before each text is tokenized (each at
        most ``max_tokenized_chars``) and while the chat template renders."""
        if isinstance(data.get("messages"), list):
            return max(1, self._count_chat(data, deadline))
        add_special = data.get("add_special_tokens", True) is not False
        total = 0
        for name in ("prompt", "input"):
            for prompt in _prompts(data.get(name)):
                if isinstance(prompt, list):
                    total += len(prompt)
                    continue
                if deadline is not None:
                    deadline.check()
                total += self._text(prompt, add_special)
        return max(1, total)

    def _count_chat(self, data: Mapping[str, Any], deadline: Deadline | None) -> int:
        if self.template is None:
            return self.fallback.count(data)
        try:
            rendered = self.template.render(data, deadline)
        except ChatTemplateError:
            return self.fallback.count(data)  # vLLM rejects it too; any reservation will do
        if deadline is not None:
            deadline.check()
        return self._text(rendered, data.get("add_special_tokens") is True)

    def _text(self, text: str, add_special: bool) -> int:
        specials = self.missing_specials if add_special else 0
        if len(text) <= self.max_tokenized_chars:
            try:
                (encoding,) = self.tokenizer.encode_batch_fast(
                    [text], add_special_tokens=add_special
                )
                return len(encoding) + specials
            except Exception:  # e.g. a lone surrogate that Rust strings cannot hold
                log.debug("tokenizer failed on a prompt; counting its byte bound", exc_info=True)
        bound = text_bytes(text) + PREPENDED_PER_TEXT
        return bound + (SPECIALS_PER_TEXT + specials if add_special else 0)

    @classmethod
    def load(cls, model_dir: Path, settings: TokenizerSettings) -> TokenizerCounter:
        from tokenizers import Tokenizer

        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise TokenizerUnavailable(f"no tokenizer.json in {model_dir}")
        try:
            tokenizer = Tokenizer.from_file(str(path))
            config = read_tokenizer_config(model_dir)
            template = ChatTemplate.load(model_dir, config)
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise TokenizerUnavailable(f"{model_dir}: {exc}") from exc
        return cls(
            tokenizer=tokenizer,
            template=template,
            fallback=ByteBound.of(settings),
            max_tokenized_chars=settings.max_tokenized_chars,
            missing_specials=_missing_specials(tokenizer, config),
        )


def _missing_specials(tokenizer: Tokenizer, config: Mapping[str, Any]) -> int:
    added = set(tokenizer.encode("", add_special_tokens=True).ids)
    missing = 0
    for flag, token in (("add_bos_token", "bos_token"), ("add_eos_token", "eos_token")):
        text = config.get(token)
        if isinstance(text, dict):
            text = text.get("content")
        token_id = tokenizer.token_to_id(text) if isinstance(text, str) else None
        if config.get(flag) is True and token_id not in added:
            missing += 1
    return missing


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """The counter of the body's ``model``; ``fallback`` for any other."""

    counters: Mapping[str, PromptCounter]
    fallback: PromptCounter

    def count(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> int:
        model = data.get("model")
        counter = self.counters.get(model, self.fallback) if isinstance(model, str) else None
        return (counter or self.fallback).count(data, deadline)


def resolve_model_dir(source: str, hf_cache: Path) -> Path:
    """A model directory as given, or a Hugging Face repo id's snapshot in ``hf_cache``
    (``models--ORG--NAME/snapshots/<refs/main>``, else its newest snapshot)."""
    given = Path(source).expanduser()
    if given.is_dir():
        return given
    repo = hf_cache.expanduser() / ("models--" + source.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / "tokenizer.json").is_file():
            return snapshot
    snapshots = sorted(
        (s for s in (repo / "snapshots").glob("*") if (s / "tokenizer.json").is_file()),
        key=lambda s: s.stat().st_mtime,
    )
    if snapshots:
        return snapshots[-1]
    raise TokenizerUnavailable(f"{source!r} is neither a model directory nor in {hf_cache}")


def _in_thread(job: Callable[[], None]) -> None:
    threading.Thread(target=job, name="vkit-tokenizer-load", daemon=True).start()


class LateTokenizer:
    """The fallback's count until the model's tokenizer shows up, then the tokenizer's.

    ``count`` never waits: when ``retry_s`` have passed since the last look it hands one
    look to ``spawn`` (a daemon thread: reading a tokenizer.json takes ~0.1-0.5 s) and counts
    this request by the fallback; a look that loads the tokenizer swaps it in (one attribute
    assignment, atomic), and from then on nothing is looked for again.
    """

    def __init__(
        self,
        model: str,
        source: str,
        settings: TokenizerSettings,
        fallback: PromptCounter,
        *,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] = _in_thread,
        retry_s: float = 30.0,
    ) -> None:
        self.model, self.source, self.settings, self.fallback = model, source, settings, fallback
        self.clock, self.spawn, self.retry_s = clock, spawn, retry_s
        self.loaded: PromptCounter | None = None
        self._looking = False
        self._next_look = clock() + retry_s

    def count(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> int:
        loaded = self.loaded
        if loaded is not None:
            return loaded.count(data, deadline)
        now = self.clock()
        if not self._looking and now >= self._next_look:
            self._looking, self._next_look = True, now + self.retry_s
            self.spawn(self._look)
        return self.fallback.count(data)

    def _look(self) -> None:
        try:
            model_dir = resolve_model_dir(self.source, self.settings.hf_cache)
            self.loaded = TokenizerCounter.load(model_dir, self.settings)
            log.warning("counting %s's prompts with its tokenizer now (%s)", self.model, model_dir)
        except TokenizerUnavailable:
            pass
        except Exception:  # a half-downloaded file: look again next interval
            log.exception("could not load %s's tokenizer yet", self.model)
        finally:
            self._looking = False


def build_prompt_counter(
    settings: TokenizerSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    spawn: Callable[[Callable[[], None]], None] = _in_thread,
    retry_s: float = 30.0,
) -> PromptCounter:
    """One counter for every model named in ``settings.models``; the byte bound for the rest
    (and, as a :class:`LateTokenizer`, for a named model until its tokenizer is there)."""
    fallback = ByteBound.of(settings)
    counters: dict[str, PromptCounter] = {}
    for model, source in settings.models.items():
        try:
            counters[model] = TokenizerCounter.load(
                resolve_model_dir(source, settings.hf_cache), settings
            )
        except TokenizerUnavailable as exc:
            log.warning(
                "counting %s's prompts by their byte bound until its tokenizer is there: %s",
                model,
                exc,
            )
            counters[model] = LateTokenizer(
                model, source, settings, fallback, clock=clock, spawn=spawn, retry_s=retry_s
            )
    return ModelCounters(counters, fallback) if counters else fallback
