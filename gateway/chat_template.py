"""A model's chat template, rendered the way vLLM renders it before tokenizing.

    >>> model = Path("/models/tiny-llama")
    >>> template = ChatTemplate.load(model, read_tokenizer_config(model))
    >>> template.render({"messages": [{"role": "user", "content": "hi"}]})
    '<|user|>\\nhi</s>\\n<|assistant|>\\n'

vLLM (0.32, ``vllm/renderers``) turns the request's messages into a conversation (text parts
joined with newlines for a template that reads ``content`` as a string; ``tool_calls``
arguments parsed into objects; tools dumped with their default fields) and has transformers
render the template in a sandboxed jinja2 environment (``trim_blocks``, ``lstrip_blocks``,
``loopcontrols``, its own ``tojson``, ``raise_exception``, ``strftime_now``), with the
tokenizer's special tokens (``bos_token`` ...) as variables. This module does the same with
jinja2 alone, so the gateway needs neither transformers nor vLLM. A template that fails to
render raises :class:`ChatTemplateError` (vLLM answers such a request with 400). Given a
:class:`gateway.deadline.Deadline`, rendering checks it every few hundred messages, output
chunks and ``tojson`` pieces, and raises :class:`gateway.deadline.DeadlineExceeded` once past.

The template comes from ``chat_template.jinja`` (transformers 5 saves it there) or from
``tokenizer_config.json``'s ``chat_template`` (a string, or named templates of which
``tool_use`` is taken when the request has tools, else ``default``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.deadline import Deadline, DeadlineExceeded

ContentFormat = Literal["string", "openai"]
# Request fields vLLM hands to the template as variables (its build_chat_params).
_REQUEST_VARIABLES = ("documents", "reasoning_effort")
CHECK_EVERY = 256  # messages, output chunks or tojson pieces between looks at the deadline
SMALL_JSON_NODES = 512  # tojson of at most this many items: the C encoder, one short call
# The deadline of the render in progress, for the tojson filter (set by ChatTemplate.render).
_DEADLINE: ContextVar[Deadline | None] = ContextVar("vkit_render_deadline", default=None)


class ChatTemplateError(ValueError):
    """The template could not be compiled or rendered for this request."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' override: no HTML escaping, and the options of json.dumps.
    deadline = _DEADLINE.get()
    if deadline is None or _within_nodes(value, SMALL_JSON_NODES):
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )
    # large: json's pure-Python encoder, piece by piece, looking at the deadline (the C one
    # would hold the GIL for one long call: 0.05-0.3 s for a 600k-item schema)
    encoder = json.JSONEncoder(
        ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    return "".join(_checked(encoder.iterencode(value), deadline))


def _within_nodes(value: Any, limit: int) -> bool:
    """Whether ``value`` holds at most ``limit`` items in all its containers (a walk that
    stops as soon as it passes them)."""
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        seen += len(item)
        if seen > limit:
            return False
        stack.extend(item)
    return True


def _checked(pieces: Iterable[str], deadline: Deadline | None) -> Iterator[str]:
    """``pieces``, looking at ``deadline`` every :data:`CHECK_EVERY` of them."""
    if deadline is None:
        yield from pieces
        return
    for index, piece in enumerate(pieces):
        if index % CHECK_EVERY == 0:
            deadline.check()
        yield piece


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body (transformers' tracker)."""

    tags = {"generation"}  # noqa: RUF012 -- jinja2's Extension API

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: jinja2.Template
    content_format: ContentFormat


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """The compiled templates of one model (``default`` and maybe ``tool_use``) and the
    variables transformers passes them (the special tokens)."""

    templates: Mapping[str, _Compiled]
    variables: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_sources(
        cls, sources: Mapping[str, str], variables: Mapping[str, str] | None = None
    ) -> ChatTemplate:
        """Compile named template sources (``{"default": "{% for ... %}"}``)."""
        env = _environment()
        compiled = {}
        for name, source in sources.items():
            try:
                template = env.from_string(source)
                fmt = _content_format(env.parse(source))
            except jinja2.TemplateError as exc:
                raise ChatTemplateError(f"chat template {name!r} does not compile: {exc}") from exc
            compiled[name] = _Compiled(template, fmt)
        return cls(compiled, dict(variables or {}))

    @classmethod
    def load(cls, model_dir: Path, config: Mapping[str, Any]) -> ChatTemplate | None:
        """The template in ``model_dir`` (``config``: its tokenizer_config.json), or ``None``
        when it has none."""
        sources: dict[str, str] = {}
        named = config.get("chat_template")
        if isinstance(named, str):
            sources["default"] = named
        elif isinstance(named, list):
            sources |= {
                t["name"]: t["template"]
                for t in named
                if isinstance(t, dict)
                and isinstance(t.get("name"), str)
                and isinstance(t.get("template"), str)
            }
        jinja_file = model_dir / "chat_template.jinja"
        if jinja_file.is_file():
            sources["default"] = jinja_file.read_text(encoding="utf-8")
        if not sources:
            return None
        return cls.from_sources(sources, special_token_variables(config))

    def render(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> str:
        """The prompt text vLLM would tokenize for this chat request; past ``deadline``,
        :class:`~gateway.deadline.DeadlineExceeded`."""
        tools = _tools(data.get("tools"))
        compiled = self._pick(tools)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ChatTemplateError("'messages' must be a non-empty list")
        fmt = compiled.content_format
        conversation = [_conversation_message(m, fmt) for m in _checked(messages, deadline)]
        continue_final = data.get("continue_final_message") is True
        tag = "CONTINUE_FINAL_MESSAGE_TAG "
        if continue_final:
            conversation[-1]["content"] = _append_to_last_text(conversation[-1], tag)
        variables: dict[str, Any] = dict(self.variables)
        kwargs = data.get("chat_template_kwargs")
        if isinstance(kwargs, dict):
            variables |= kwargs
        variables |= {name: data.get(name) for name in _REQUEST_VARIABLES}
        if data.get("reasoning_effort") is not None and "enable_thinking" not in variables:
            variables["enable_thinking"] = data.get("reasoning_effort") != "none"
        add_generation_prompt = data.get("add_generation_prompt", True) is not False
        arguments: dict[str, Any] = {"messages": conversation, "tools": tools}
        arguments["add_generation_prompt"] = add_generation_prompt
        rendered = _render(compiled.template, variables, arguments, deadline)
        if continue_final and tag.strip() in rendered:
            cut = rendered.rindex(tag.strip())
            exact = rendered[cut : cut + len(tag)] == tag
            rendered = rendered[:cut] if exact else rendered[:cut].rstrip()
        return rendered

    def _pick(self, tools: list[Any] | None) -> _Compiled:
        if tools and "tool_use" in self.templates:
            return self.templates["tool_use"]
        if "default" in self.templates:
            return self.templates["default"]
        return next(iter(self.templates.values()))


def _render(
    template: jinja2.Template,
    variables: Mapping[str, Any],
    arguments: Mapping[str, Any],
    deadline: Deadline | None,
) -> str:
    """The template rendered as transformers calls it (``render(**variables, messages=...)``:
    a variable named like an argument is an error, as there)."""
    token = _DEADLINE.set(deadline)
    try:
        if deadline is None:
            return template.render(**variables, **arguments)
        return "".join(_checked(template.generate(**variables, **arguments), deadline))
    except DeadlineExceeded:
        raise
    except Exception as exc:  # a template's raise_exception, or its own bugs
        raise ChatTemplateError(f"the chat template rejected the messages: {exc}") from exc
    finally:
        _DEADLINE.reset(token)


def special_token_variables(config: Mapping[str, Any]) -> dict[str, str]:
    """``bos_token``, ``eos_token``, ... from tokenizer_config.json (a string or an
    AddedToken mapping with ``content``): the variables transformers gives a template."""
    variables = {}
    for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token"):
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            variables[name] = value
    return variables


def read_tokenizer_config(model_dir: Path) -> dict[str, Any]:
    """``tokenizer_config.json`` of ``model_dir``; empty when there is none."""
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _tools(tools: object) -> list[Any] | None:
    """Tools as vLLM 0.32 dumps them for the template (its pydantic defaults filled in)."""
    if not isinstance(tools, list) or not tools:
        return None
    dumped: list[Any] = []
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            dumped.append(tool)
            continue
        function = tool["function"]
        entry = {
            "name": function.get("name"),
            "description": function.get("description"),
            "parameters": function.get("parameters"),
        }
        if function.get("strict") is not None:
            entry["strict"] = function["strict"]
        entry["defer_loading"] = function.get("defer_loading", tool.get("defer_loading"))
        dumped.append(
            {
                "type": tool.get("type", "function"),
                "function": entry,
                "defer_loading": tool.get("defer_loading"),
            }
        )
    return dumped


def text_parts(content: object) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts


def _conversation_message(message: object, fmt: ContentFormat) -> dict[str, Any]:
    """One request message as vLLM hands it to the template (its parse_chat_messages)."""
    if not isinstance(message, dict):
        raise ChatTemplateError("each message must be an object")
    role = message.get("role")
    texts = text_parts(message.get("content"))
    content: Any
    if fmt == "openai" and role != "tool":
        content = [{"type": "text", "text": text} for text in texts]
    else:
        content = "\n".join(texts)
    converted: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant" and isinstance(message.get("tool_calls"), list):
        calls = [tool_call_for_template(call) for call in message["tool_calls"]]
        if calls:
            converted["tool_calls"] = calls
    if isinstance(message.get("reasoning"), str):
        converted["reasoning"] = converted["reasoning_content"] = message["reasoning"]
    for name in ("tool_call_id", "name"):
        if isinstance(message.get(name), str):
            converted[name] = message[name]
    return converted


def tool_call_for_template(call: object) -> object:
    """A tool call with its ``arguments`` as an object, as templates expect them."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    arguments = function.get("arguments")
    if isinstance(arguments, str) and arguments:
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = None
    function["arguments"] = arguments if isinstance(arguments, dict) else {}
    return {**call, "function": function}


def _append_to_last_text(message: dict[str, Any], tag: str) -> Any:
    content = message["content"]
    if isinstance(content, str):
        return content + tag
    for part in reversed(content):
        part["text"] += tag
        break
    return content


def _content_format(ast: jinja2.nodes.Template) -> ContentFormat:
    """``openai`` when the template loops over a message's ``content`` (its parts), else
    ``string`` -- vLLM's detection, simplified to any loop over ``X.content``/``content``."""
    for loop in ast.find_all(jinja2.nodes.For):
        node = loop.iter
        while isinstance(node, jinja2.nodes.Filter | jinja2.nodes.Test) and node.node:
            node = node.node
        if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
            node = node.node
        if isinstance(node, jinja2.nodes.Name) and node.name == "content":
            return "openai"
        if isinstance(node, jinja2.nodes.Getattr) and node.attr == "content":
            return "openai"
        if (
            isinstance(node, jinja2.nodes.Getitem)
            and isinstance(node.arg, jinja2.nodes.Const)
            and node.arg.value == "content"
        ):
            return "openai"
    return "string"
