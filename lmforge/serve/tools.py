"""OpenAI tool calling: tools into the prompt, a grammar that keeps every call valid JSON for
its function's parameter schema, and the calls parsed back out (whole or streamed).

Calls use the Hermes / Qwen 2.5 format that tool-trained chat templates teach::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The reply is constrained by a Lark grammar (llguidance, `lmforge.infer.structured`) whose call
body is ``%json {schema}`` with ``name`` fixed to one function and ``arguments`` that
function's closed parameter schema, so a finished call always parses and validates:

    tool_choice "auto"      start: TEXT | calls   (TEXT: any text that holds no "<tool_call>")
    tool_choice "required"  start: calls
    named function f        start: call_f
    "none"                  no tools in the prompt, no grammar, no parsing

A template that renders ``tools`` itself gets them (and ``tool`` / ``tool_calls`` messages in
the `transformers` shape); one that does not (lmforge's default ChatML template) gets them as
text in the system turn, ``tool`` results as user turns in ``<tool_response>`` tags and earlier
calls as ``<tool_call>`` blocks, which is what Qwen 2.5's own template renders.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from lmforge.infer.structured_backends import JSON_SEPARATORS
from lmforge.infer.structured_spec import close_json_schema
from lmforge.serve.protocol import ChatMessage, ToolDefinition

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "ParsedCall",
    "ToolCallStream",
    "parse_tool_calls",
    "template_messages",
    "tool_grammar",
]

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass
class ParsedCall:
    name: str
    arguments: str  # compact JSON text
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


# ---------------------------------------------------------------------- the prompt
def _tool_dict(tool: ToolDefinition) -> dict[str, Any]:
    return tool.model_dump(exclude_none=True)


def _arguments_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _calls_text(message: ChatMessage) -> str:
    blocks = [
        f"{CALL_OPEN}\n"
        + json.dumps(
            {"name": c.function.name, "arguments": _arguments_value(c.function.arguments)},
            ensure_ascii=False,
        )
        + f"\n{CALL_CLOSE}"
        for c in message.tool_calls or []
    ]
    return "\n".join(([message.text()] if message.text() else []) + blocks)


def _system_tools_text(tools: list[ToolDefinition]) -> str:
    listed = "\n".join(json.dumps(_tool_dict(t), ensure_ascii=False) for t in tools)
    return (
        f"# Tools\n\nYou may call these functions:\n<tools>\n{listed}\n</tools>\n"
        f'To call one, reply with {CALL_OPEN}\n{{"name": <name>, "arguments": <object>}}\n'
        f"{CALL_CLOSE}"
    )


def template_supports_tools(chat_template: str | None) -> bool:
    """Whether the template renders ``tools`` itself (it names the variable)."""
    return bool(chat_template) and "tools" in chat_template


def template_messages(
    messages: list[ChatMessage], tools: list[ToolDefinition] | None, chat_template: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """``(messages, tools)`` for ``apply_chat_template`` (see the module docstring); ``tools``
    is None when the request shows none (or the template cannot render them: then they are in
    the system turn)."""
    native = template_supports_tools(chat_template)
    out: list[dict[str, Any]] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        if native:
            item: dict[str, Any] = {"role": role, "content": m.text()}
            if m.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": c.function.name,
                            "arguments": _arguments_value(c.function.arguments),
                        },
                    }
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                item["tool_call_id"] = m.tool_call_id
            if m.name is not None and role == "tool":
                item["name"] = m.name
            out.append(item)
        elif role == "tool":
            out.append(
                {"role": "user", "content": f"<tool_response>\n{m.text()}\n</tool_response>"}
            )
        elif m.tool_calls:
            out.append({"role": "assistant", "content": _calls_text(m)})
        else:
            out.append({"role": role, "content": m.text()})
    if not tools:
        return out, None
    if native:
        return out, [_tool_dict(t) for t in tools]
    text = _system_tools_text(tools)
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{text}"}
    else:
        out.insert(0, {"role": "system", "content": text})
    return out, None


# ---------------------------------------------------------------------- the grammar
def _call_schema(tool: ToolDefinition) -> dict[str, Any]:
    parameters = tool.function.parameters or _EMPTY_PARAMETERS
    item, key = JSON_SEPARATORS["llguidance"]
    return {
        # compact JSON, no free whitespace (as for response_format; see lmforge.infer.structured)
        "x-guidance": {"whitespace_flexible": False, "item_separator": item, "key_separator": key},
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": close_json_schema(parameters),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_grammar(tools: list[ToolDefinition], mode: str, parallel: bool = True) -> str:
    """The Lark grammar (llguidance dialect) for a reply under ``mode`` ("auto", "required" or
    "function:NAME"); ``parallel`` allows several calls in one reply."""
    if mode.startswith("function:"):
        chosen = [t for t in tools if t.function.name == mode.removeprefix("function:")]
        start, parallel = "start: calls", False
    else:
        chosen = tools
        start = "start: TEXT | calls" if mode == "auto" else "start: calls"
    rules = [start, "calls: call" + (' ("\\n" call)*' if parallel else "")]
    rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(chosen))))
    for i, tool in enumerate(chosen):
        schema = json.dumps(_call_schema(tool), ensure_ascii=False)
        rules.append(f'call_{i}: "{CALL_OPEN}\\n" %json {schema} "\\n{CALL_CLOSE}"')
    if mode == "auto":
        rules.append(f"TEXT: /(.|\\n)*/ & ~/(.|\\n)*{CALL_OPEN}(.|\\n)*/")
    return "\n".join(rules) + "\n"


# ---------------------------------------------------------------------- parsing the reply
def _parse_call(body: str) -> ParsedCall | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", {})
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str) -> tuple[str | None, list[ParsedCall]]:
    """``(content, calls)`` of a whole reply: the text before the first ``<tool_call>`` is
    content (None when empty), each complete ``<tool_call>…</tool_call>`` block a call. An
    unfinished block (the reply hit max_tokens) is dropped."""
    head, sep, rest = text.partition(CALL_OPEN)
    calls: list[ParsedCall] = []
    while sep:
        body, closed, rest = rest.partition(CALL_CLOSE)
        if not closed:
            break
        call = _parse_call(body.strip())
        if call is not None:
            calls.append(call)
        _, sep, rest = rest.partition(CALL_OPEN)
    content = head if head.strip() or not calls else None
    return (content if content else None), calls


class ToolCallStream:
    """Incremental `parse_tool_calls`: feed each new piece of text, get back the content to
    stream now and the calls completed by it. Text that may be the start of ``<tool_call>``
    is held back until it is decided."""

    def __init__(self) -> None:
        self.text = ""
        self.content_sent = 0  # characters of content already released
        self.in_calls = False
        self.num_calls = 0

    def feed(self, piece: str, final: bool = False) -> tuple[str, list[ParsedCall]]:
        self.text += piece
        content = ""
        if not self.in_calls:
            at = self.text.find(CALL_OPEN)
            if at >= 0:
                self.in_calls = True
                end = at
            elif final:
                end = len(self.text)
            else:
                end = len(self.text) - _held_back(self.text)
            content = self.text[self.content_sent : end]
            self.content_sent = max(self.content_sent, end)
        if not self.in_calls:
            return content, []
        _, calls = parse_tool_calls(self.text[self.content_sent :])
        new = calls[self.num_calls :]
        self.num_calls = len(calls)
        return content, new


def _held_back(text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``<tool_call>``."""
    for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-k:]):
            return k
    return 0
