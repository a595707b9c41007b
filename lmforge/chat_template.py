"""Chat templates rendered exactly as `transformers` renders them.

Same Jinja environment (sandboxed, ``trim_blocks``, ``lstrip_blocks``, loop controls), the
same ``tojson`` filter, ``raise_exception`` / ``strftime_now`` globals, ``namespace`` and
``dict`` helpers, and the same message preprocessing (None-valued keys dropped, reasoning
aliases), so a template behaves the same here, in `transformers` and in vLLM.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """Bad messages, or a template that fails to compile or raises while rendering."""


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    **variables: Any,
) -> str:
    """Render ``messages`` with template ``source``; ``variables`` (special tokens, extra
    template arguments) become template globals for this call."""
    template = _compile_template(source)
    try:
        return template.render(
            messages=_checked_messages(messages),
            tools=_checked_dicts(tools, "tools"),
            documents=_checked_dicts(documents, "documents"),
            add_generation_prompt=add_generation_prompt,
            **_plain(variables),
        )
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc


def _checked_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate, drop None-valued keys (as `transformers` does) and alias reasoning fields."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role', 'content'} dicts")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{i}]: expected a dict, got {type(message).__name__}")
        message = {k: v for k, v in message.items() if v is not None}
        for field in ("role", "content"):
            if not isinstance(message.get(field), str):
                got = type(message[field]).__name__ if field in message else "nothing"
                raise ChatTemplateError(
                    f'messages[{i}]: field "{field}" must be a string, got {got}'
                )
        checked.append(_plain(_with_reasoning_aliases(message)))
    return checked


def _with_reasoning_aliases(message: dict[str, Any]) -> dict[str, Any]:
    """Templates read reasoning as ``reasoning_content`` (or ``thinking``); accept any name."""
    reasoning = next((message[k] for k in _REASONING_KEYS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _checked_dicts(items: Sequence[Any] | None, name: str) -> list[Any] | None:
    if items is None:
        return None
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ChatTemplateError(f"{name}[{i}]: expected a dict, got {type(item).__name__}")
    return _plain(list(items))


def _plain(value: Any) -> Any:
    """A copy built of JSON types only: templates are untrusted code, and rich objects carry
    methods the sandbox cannot vet. Anything else becomes a ``"<TypeName>"`` placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (str, int, float):  # subclasses (enums, ...) back to the base type
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """Plain ``json.dumps`` (Jinja's own ``tojson`` HTML-escapes, which chat text must not)."""
    options = dict(ensure_ascii=ensure_ascii, indent=indent, separators=separators)
    return json.dumps(value, sort_keys=sort_keys, **options)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _refuse_private(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with '_'")


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore-prefixed attributes (no reaching internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature: self is args[0]
        for name in dict(*args[1:], **kwargs):
            _refuse_private(name)
        jinja2.utils.Namespace.__init__(*args, **kwargs)

    def __setitem__(self, name: str, value: Any) -> None:
        _refuse_private(name)
        super().__setitem__(name, value)


class _DictBuilder:
    """``dict(...)`` / ``dict.fromkeys(...)`` for templates without exposing the ``dict`` type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any) -> dict:
        return dict.fromkeys(*args)


class _GenerationTag(jinja2.ext.Extension):
    """Parses ``{% generation %}...{% endgeneration %}`` (assistant-mask markers used by some
    templates) and renders the body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    """The Jinja environment of `transformers`' chat templates."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictBuilder()
    env.globals["namespace"] = _Namespace
    return env


@functools.lru_cache(maxsize=32)
def _compile_template(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template line {exc.lineno}: {exc.message}") from exc
