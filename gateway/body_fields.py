"""The request body, described once: the fields each route reads, their checks and schemas.

Each field is an object that both reads its value out of a parsed body (raising
:class:`InvalidRequest` with the message a client sees) and writes its JSON Schema:
:func:`gateway.body.parse_body` calls the reads, :mod:`gateway.openapi_bodies` builds the
OpenAPI request bodies (which the fuzz test generates from) out of the same tuples:

- :data:`GENERATION_FIELDS`: what ``/v1/chat/completions`` and ``/v1/completions`` check
  (``model``, ``stream``, ``stream_options``, the output lengths, ``n``/``best_of``);
  :data:`EMBEDDING_FIELDS`: ``model`` and a ``stream`` that may not be true;
- :class:`Described`: a field the gateway counts but leaves vLLM to check: ``messages``
  (text or content parts: :data:`MEDIA_PARTS`, each image, audio or video part billed as
  media), ``prompt`` and ``input`` (:data:`PROMPT_FORMS`: a text, a batch of texts, token ids,
  a batch of token-id lists);
- the agent APIs' bodies: :data:`RESPONSES_BODY` (``/v1/responses``: ``input`` a text or
  items, ``instructions``, ``max_output_tokens``; ``background`` and ``previous_response_id``
  refused, :class:`Refused`) and :data:`MESSAGES_BODY` (``/v1/messages``: ``messages``,
  ``system``, ``max_tokens``), their prompt fields checked for their JSON type only
  (:class:`Shaped`), the rest left to vLLM.

A route's schema documents every field its parser checks, so whatever the schema admits
the parser accepts (``tests/gateway/test_body_schema.py``); ``null`` stands for absent,
as the parser reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequest

JsonSchema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ModelName:
    """The required ``model``: a non-empty string."""

    name: str = "model"
    required: bool = True

    def read(self, data: Mapping[str, Any]) -> str:
        value = data.get(self.name)
        if not isinstance(value, str) or not value:
            raise InvalidRequest(
                f"'{self.name}' is required and must be a non-empty string", param=self.name
            )
        return value

    def schema(self) -> JsonSchema:
        return {"type": "string", "minLength": 1}


@dataclass(frozen=True, slots=True)
class Flag:
    """A boolean; ``null`` or absent is false. ``unsupported``: the route refuses ``true``
    with that message (``stream`` where nothing is generated)."""

    name: str
    unsupported: str | None = None
    required: bool = False

    def read(self, data: Mapping[str, Any]) -> bool:
        value = data.get(self.name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise InvalidRequest(f"'{self.name}' must be a boolean", param=self.name)
        if value and self.unsupported:
            raise InvalidRequest(self.unsupported, param=self.name)
        return value

    def schema(self) -> JsonSchema:
        if self.unsupported:
            return {"enum": [False, None]}
        return {"type": ["boolean", "null"]}


@dataclass(frozen=True, slots=True)
class Count:
    """A positive integer or ``None``. ``says_minimum``: below 1 is its own message
    (``'max_tokens' must be at least 1, got 0``), else one message for every bad value."""

    name: str
    says_minimum: bool = False
    required: bool = False

    def read(self, data: Mapping[str, Any]) -> int | None:
        value = data.get(self.name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"'{self.name}' must be a positive integer", param=self.name)
        if value < 1:
            if self.says_minimum:
                message = f"'{self.name}' must be at least 1, got {value}"
            else:
                message = f"'{self.name}' must be a positive integer"
            raise InvalidRequest(message, param=self.name)
        return value

    def schema(self) -> JsonSchema:
        return {"type": ["integer", "null"], "minimum": 1}


@dataclass(frozen=True, slots=True)
class Options:
    """An object of boolean flags (``stream_options``): each flag read, ``null`` as false."""

    name: str
    flags: tuple[str, ...]
    required: bool = False

    def read(self, data: Mapping[str, Any]) -> dict[str, bool]:
        """Each flag's value (all false when the object is absent or ``null``)."""
        options = data.get(self.name)
        if options is None:
            return dict.fromkeys(self.flags, False)
        if not isinstance(options, dict):
            raise InvalidRequest(f"'{self.name}' must be an object", param=self.name)
        read = {}
        for flag in self.flags:
            value = options.get(flag, False)
            if value is not None and not isinstance(value, bool):
                raise InvalidRequest(f"'{self.name}.{flag}' must be a boolean", param=self.name)
            read[flag] = bool(value)
        return read

    def schema(self) -> JsonSchema:
        flags = {flag: {"type": ["boolean", "null"]} for flag in self.flags}
        return {"type": ["object", "null"], "properties": flags}


@dataclass(frozen=True, slots=True)
class Described:
    """A field the gateway reads to count tokens but leaves to vLLM to check: documented
    (and fuzzed) with its schema, passed through as it is."""

    name: str
    described: JsonSchema = field(hash=False)
    required: bool = True

    def read(self, data: Mapping[str, Any]) -> Any:
        return data.get(self.name)

    def schema(self) -> JsonSchema:
        return self.described


@dataclass(frozen=True, slots=True)
class Shaped:
    """A prompt field whose JSON type the gateway checks (so a wrong one is refused in the
    route's own envelope, naming it), its contents left to vLLM: ``kinds`` the Python types
    ``json.loads`` makes of what the schema admits, ``says`` them in words."""

    name: str
    described: JsonSchema = field(hash=False)
    kinds: tuple[type, ...]
    says: str
    required: bool = True

    def read(self, data: Mapping[str, Any]) -> Any:
        value = data.get(self.name)
        if value is None and not self.required:
            return None
        if not isinstance(value, self.kinds):
            raise InvalidRequest(f"'{self.name}' must be {self.says}", param=self.name)
        return value

    def schema(self) -> JsonSchema:
        return self.described if self.required else {"anyOf": [self.described, {"type": "null"}]}


@dataclass(frozen=True, slots=True)
class Refused:
    """A field the gateway refuses whenever it is set (not ``null``, not ``false``): what it
    asks for would escape the gateway's accounting (``because`` says how)."""

    name: str
    because: str
    required: bool = False

    def read(self, data: Mapping[str, Any]) -> None:
        value = data.get(self.name)
        if value is not None and value is not False:
            raise InvalidRequest(
                f"'{self.name}' is not supported through this gateway: {self.because}",
                param=self.name,
            )

    def schema(self) -> JsonSchema:
        return {"enum": [False, None]}


BodyField = ModelName | Flag | Count | Options | Described | Shaped | Refused

_TOKEN_IDS: JsonSchema = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "minItems": 1,
}
# ``prompt`` (completions) and ``input`` (embeddings): form -> (schema, a batch?). A batch
# is one prompt per item: a completion each (gateway.body's ``prompts``), counts summed.
PROMPT_FORMS: dict[str, tuple[JsonSchema, bool]] = {
    "text": ({"type": "string"}, False),
    "texts": ({"type": "array", "items": {"type": "string"}, "minItems": 1}, True),
    "token_ids": (_TOKEN_IDS, False),
    "token_id_lists": ({"type": "array", "items": _TOKEN_IDS, "minItems": 1}, True),
}

_URL: JsonSchema = {
    "type": "object",
    "required": ["url"],
    "properties": {"url": {"type": "string"}},
}
_AUDIO_DATA: JsonSchema = {
    "type": "object",
    "required": ["data", "format"],
    "properties": {"data": {"type": "string"}, "format": {"type": "string"}},
}
# A chat content part's type -> (the media it is, its payload's schema). vLLM also accepts a
# part without "type", naming it by its one key: the schema leaves "type" optional too.
MEDIA_PARTS: dict[str, tuple[str, JsonSchema]] = {
    "image_url": ("image", _URL),
    "input_image": ("image", {"type": "string"}),
    "image": ("image", {"type": "string"}),
    "image_pil": ("image", {}),
    "image_embeds": ("image", {}),
    "audio_url": ("audio", _URL),
    "input_audio": ("audio", _AUDIO_DATA),
    "audio": ("audio", {"type": "string"}),
    "video_url": ("video", _URL),
    "video": ("video", {"type": "string"}),
}
TEXT_PART: JsonSchema = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}


def media_part_schema(kind: str) -> JsonSchema:
    """The schema of a ``kind`` part: ``{"type": kind, kind: payload}``."""
    _, payload = MEDIA_PARTS[kind]
    return {
        "type": "object",
        "required": [kind],
        "properties": {"type": {"const": kind}, kind: payload},
    }


CONTENT_PARTS: JsonSchema = {
    "type": "array",
    "minItems": 1,
    "items": {"anyOf": [TEXT_PART, *(media_part_schema(kind) for kind in MEDIA_PARTS)]},
}
MESSAGE: JsonSchema = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, CONTENT_PARTS]},
    },
}
PROMPT: JsonSchema = {"anyOf": [schema for schema, _ in PROMPT_FORMS.values()]}

MODEL = ModelName()
STREAM = Flag("stream")
STREAM_OPTIONS = Options("stream_options", ("include_usage", "continuous_usage_stats"))
# Both output lengths are read; the smaller one wins (gateway.body).
MAX_COMPLETION_TOKENS = Count("max_completion_tokens", says_minimum=True)
MAX_TOKENS = Count("max_tokens", says_minimum=True)
N = Count("n")
BEST_OF = Count("best_of")

GENERATION_FIELDS: tuple[BodyField, ...] = (
    MODEL,
    STREAM,
    STREAM_OPTIONS,
    MAX_COMPLETION_TOKENS,
    MAX_TOKENS,
    N,
    BEST_OF,
)
NO_STREAM = Flag("stream", unsupported="'stream' is not supported on /v1/embeddings")
EMBEDDING_FIELDS: tuple[BodyField, ...] = (MODEL, NO_STREAM)

MESSAGES: JsonSchema = {"type": "array", "items": MESSAGE, "minItems": 1}
CHAT_BODY: tuple[BodyField, ...] = (*GENERATION_FIELDS, Described("messages", MESSAGES))
COMPLETIONS_BODY: tuple[BodyField, ...] = (*GENERATION_FIELDS, Described("prompt", PROMPT))
EMBEDDINGS_BODY: tuple[BodyField, ...] = (*EMBEDDING_FIELDS, Described("input", PROMPT))


# The agent APIs (vLLM serves both: docs/gateway-bodies.md#the-agent-apis). Their items and
# content blocks are objects of many types; the gateway checks the containers and bills
# what they hold (gateway.agent_prompt), vLLM checks each item.
_OBJECTS: JsonSchema = {"type": "array", "items": {"type": "object"}}
RESPONSES_INPUT = Shaped(
    "input",
    {"anyOf": [{"type": "string"}, {**_OBJECTS, "minItems": 1}]},
    (str, list),
    "a string or a list of input items",
)
INSTRUCTIONS = Shaped("instructions", {"type": "string"}, (str,), "a string", required=False)
MAX_OUTPUT_TOKENS = Count("max_output_tokens", says_minimum=True)
BACKGROUND = Refused(
    "background", "a background response runs on after the request, unmetered and unlimited"
)
PREVIOUS_RESPONSE_ID = Refused(
    "previous_response_id",
    "the stored conversation it names is held by one replica and its prompt cannot be"
    " counted here; send the whole conversation as 'input'",
)
RESPONSES_BODY: tuple[BodyField, ...] = (
    MODEL,
    STREAM,
    MAX_OUTPUT_TOKENS,
    RESPONSES_INPUT,
    INSTRUCTIONS,
    BACKGROUND,
    PREVIOUS_RESPONSE_ID,
)
ANTHROPIC_MESSAGE: JsonSchema = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, _OBJECTS]},
    },
}
ANTHROPIC_MESSAGES = Shaped(
    "messages",
    {"type": "array", "items": ANTHROPIC_MESSAGE, "minItems": 1},
    (list,),
    "a list of messages",
)
SYSTEM = Shaped(
    "system",
    {"anyOf": [{"type": "string"}, _OBJECTS]},
    (str, list),
    "a string or a list of text blocks",
    required=False,
)
MESSAGES_BODY: tuple[BodyField, ...] = (MODEL, STREAM, MAX_TOKENS, ANTHROPIC_MESSAGES, SYSTEM)


def body_schema(fields: tuple[BodyField, ...]) -> JsonSchema:
    """The JSON Schema of a body made of ``fields`` (any other field passes through)."""
    return {
        "type": "object",
        "required": [f.name for f in fields if f.required],
        "properties": {f.name: f.schema() for f in fields},
    }
