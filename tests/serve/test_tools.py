"""Tool calling pieces: the prompt (native and fallback templates), the grammar (every call a
sampler can produce parses and validates against its function's schema), the parsers."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from lmforge.infer.structured import compile_constraint
from lmforge.serve.protocol import ChatMessage, ToolDefinition
from lmforge.serve.tools import (
    CALL_OPEN,
    ToolCallStream,
    parse_tool_calls,
    template_messages,
    tool_grammar,
)
from lmforge.tokenizer import load_tokenizer

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
}
TOOLS = [
    ToolDefinition.model_validate(
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
    ),
    ToolDefinition.model_validate(
        {"type": "function", "function": {"name": "get_time", "description": "now"}}
    ),
]
SCHEMAS = {"get_weather": WEATHER, "get_time": {"type": "object", "properties": {}}}


def msgs(*items: dict) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in items]


HISTORY = msgs(
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
)  # fmt: skip


def test_fallback_prompt_puts_tools_in_the_system_turn():
    plain, tools = template_messages(HISTORY, TOOLS, "{{ messages }}")
    assert tools is None
    assert plain[0]["role"] == "system" and plain[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in plain[0]["content"] and "<tools>" in plain[0]["content"]
    call = json.loads(plain[2]["content"].removeprefix(CALL_OPEN).split("</tool_call>")[0])
    assert call == {"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}
    assert plain[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    assert template_messages(HISTORY[1:2], None, None) == ([HISTORY[1].model_dump(
        include={"role", "content"})], None)  # fmt: skip


def test_native_template_gets_tools_and_tool_messages(model_dir):
    tok = load_tokenizer(model_dir)
    tok.chat_template = (
        "{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
        "{% for c in m.tool_calls or [] %}{{ c.function.name }}{{ c.function.arguments | tojson }}"
        "{% endfor %}{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}{% endfor %}"
    )
    plain, tools = template_messages(HISTORY, TOOLS, tok.chat_template)
    text = tok.apply_chat_template(plain, tools=tools)
    assert text == (
        "[get_weather][get_time]<system>Be brief.<user>Weather in Oslo?"
        '<assistant>get_weather{"city": "Oslo", "days": 1}<tool>sunny#c1'
    )


def sample_constrained(constraint, vocab: int, seed: int, limit: int = 300) -> list[int]:
    """Draw uniformly among the tokens the constraint allows until it finishes."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(limit):
        row = torch.zeros(vocab)
        constraint.mask_logits(row)
        token = int(torch.multinomial(row.softmax(-1), 1, generator=gen))
        constraint.accept(token)
        out.append(token)
        if constraint.is_finished():
            break
    return out


@pytest.mark.parametrize("mode", ["required", "function:get_weather", "auto"])
def test_every_sampled_call_parses_and_validates(model_dir, mode):
    tok = load_tokenizer(model_dir)
    grammar = tool_grammar(TOOLS, mode, parallel=False)
    stops = set(tok.stop_token_ids)
    calls_seen = 0
    for seed in range(6):
        c = compile_constraint(tok, lark=grammar)
        if mode == "auto" and seed % 2 == 0:  # steer half the replies into a call
            for t in tok.encode(CALL_OPEN):
                c.accept(t)
            prefix = CALL_OPEN
        else:
            prefix = ""
        ids = sample_constrained(c, tok.vocab_size, seed)
        assert c.is_finished(), "the grammar must end within the limit"
        text = prefix + tok.decode([t for t in ids if t not in stops])
        content, calls = parse_tool_calls(text)
        if mode != "auto" or prefix:
            assert len(calls) == 1 and content is None, text
        for call in calls:
            if mode.startswith("function:"):
                assert call.name == "get_weather"
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
            calls_seen += 1
        if mode == "auto" and not prefix:
            assert CALL_OPEN not in text and calls == [] and content == (text or None)
    assert calls_seen >= 3


def test_parse_and_stream_agree():
    reply = (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima", '
        '"days": 2}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n'
        "</tool_call>"
    )
    content, calls = parse_tool_calls(reply)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Lima", "days": 2}), ("get_time", {})]  # fmt: skip
    for size in (1, 3, 7):
        stream, streamed, got = ToolCallStream(), "", []
        pieces = [reply[i : i + size] for i in range(0, len(reply), size)]
        for k, piece in enumerate(pieces):
            text, new = stream.feed(piece, final=k == len(pieces) - 1)
            assert "<" not in text  # a possible "<tool_call>" is held back
            streamed += text
            got += new
        assert streamed == content
        assert [(c.name, c.arguments) for c in got] == [(c.name, c.arguments) for c in calls]
    assert parse_tool_calls("plain <b>text</b>") == ("plain <b>text</b>", [])
    unfinished = parse_tool_calls('<tool_call>\n{"name": "get_ti')
    assert unfinished == (None, [])


# ---------------------------------------------------------------------- through the server
SMALL = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer",
                   "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
}  # fmt: skip
API_TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": SMALL}},
             {"type": "function", "function": {"name": "clock"}}]  # fmt: skip
API_SCHEMAS = {"weather": SMALL, "clock": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def client(lora_server):
    import openai

    return openai.OpenAI(base_url=lora_server + "/v1", api_key="none", max_retries=0, timeout=60)


def streamed_calls(stream) -> tuple[str, list[tuple[str, str, str]], str | None]:
    """Content, [(id, name, arguments)] and finish reason accumulated from stream chunks."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for call in delta.tool_calls or []:
                item = calls.setdefault(call.index, ["", "", ""])
                item[0] += call.id or ""
                item[1] += call.function.name or ""
                item[2] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [tuple(calls[i]) for i in sorted(calls)], finish


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "weather"}}]
)
def test_tool_calls_through_openai_client_streamed_and_whole(client, choice):
    kw = dict(model="tiny-long", messages=[{"role": "user", "content": "Weather in Oslo?"}],
              tools=API_TOOLS, tool_choice=choice, max_tokens=150, temperature=0,
              parallel_tool_calls=False)  # fmt: skip
    whole = client.chat.completions.create(**kw)
    (ch,) = whole.choices
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    (call,) = ch.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), API_SCHEMAS[call.function.name])
    if isinstance(choice, dict):
        assert call.function.name == "weather"
    content, calls, finish = streamed_calls(client.chat.completions.create(stream=True, **kw))
    assert content == "" and finish == "tool_calls"
    assert [(n, a) for _, n, a in calls] == [(call.function.name, call.function.arguments)]
    assert calls[0][0].startswith("call_")
    # the call and its result go back through the chat template
    follow = client.chat.completions.create(
        model="tiny-long", tools=API_TOOLS, max_tokens=8, temperature=0,
        messages=[*kw["messages"], ch.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}],
    )  # fmt: skip
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_auto_and_none(client):
    kw = dict(model="tiny-long", messages=[{"role": "user", "content": "Hi"}], max_tokens=40,
              tools=API_TOOLS)  # fmt: skip
    for seed in range(3):
        r = client.chat.completions.create(seed=seed, **kw)
        content, calls, _ = streamed_calls(
            client.chat.completions.create(seed=seed, stream=True, **kw)
        )
        msg = r.choices[0].message
        assert (msg.content or "") == content
        assert [(c.function.name, c.function.arguments) for c in msg.tool_calls or []] == [
            (n, a) for _, n, a in calls]  # fmt: skip
        assert "<tool_call>" not in content
    none = client.chat.completions.create(tool_choice="none", temperature=0, **kw)
    assert none.choices[0].message.tool_calls is None
