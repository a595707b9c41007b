"""Request validation rules of the OpenAI models, and the error shape."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lmforge.serve.errors import validation_error_body
from lmforge.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, error_body
from lmforge.serve.responses import ChatCompletionChunk, ChunkChoice, Delta

MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **kw})


def errors_of(**kw) -> dict:
    with pytest.raises(ValidationError) as info:
        chat(**kw)
    return validation_error_body(info.value.errors())["error"]


def test_defaults_and_aliases():
    req = chat(max_completion_tokens=5, stop="x", logprobs=True, top_logprobs=3)
    assert req.token_limit == 5 and req.stop == ["x"] and req.num_logprobs == 3
    assert chat().stop == [] and chat().num_logprobs is None
    assert chat(logprobs=True).num_logprobs == 0  # the sampled token's logprob only
    parts = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                         {"type": "text", "text": "b"}]}])  # fmt: skip
    assert parts.messages[0].text() == "ab"
    fmt = chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
    assert fmt.response_format.json_schema.schema_ == {}


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frobnicate": 1}, "frobnicate"),  # unknown fields are refused, by name
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"seed": 2**64}, "seed"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
    ],
)
def test_field_errors_name_the_field(kw, param):
    err = errors_of(**kw)
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error" and param in err["message"]


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
        ({"stream_options": {"include_usage": True}}, "only allowed when stream"),
        ({"tools": [{"type": "function"}]}, "Field required"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "not in tools",
        ),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [TOOL, TOOL]}, "unique"),
        ({"tools": [TOOL], "guided_regex": "a"}, "cannot be combined"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias is not supported"),
        ({"max_tokens": 3, "max_completion_tokens": 4}, "disagree"),
        ({"response_format": {"type": "json_schema"}}, "needs a"),
    ],
)
def test_rule_errors(kw, words):
    assert words in errors_of(**kw)["message"]


def test_completion_request_rules():
    ok = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3], "logprobs": 2})
    assert ok.prompt == [1, 2, 3] and ok.num_logprobs == 2
    for bad in ({"prompt": []}, {"prompt": "x", "suffix": "y"}, {"prompt": "x", "best_of": 3},
                {"prompt": "x", "echo": True, "logprobs": 1}, {"prompt": 5}):  # fmt: skip
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"model": "m", **bad})


def test_validation_error_body_for_bad_json_and_non_object():
    body = validation_error_body([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON"}])
    assert "not valid JSON" in body["error"]["message"]
    body = validation_error_body([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    assert body["error"]["message"] == "the request body must be a JSON object"


def test_error_shape():
    assert error_body("m", param="p", code="c") == {
        "error": {"message": "m", "type": "invalid_request_error", "param": "p", "code": "c"}
    }
    e = APIError("gone", status=404, code="model_not_found", param="model")
    assert e.status == 404 and e.body()["error"]["code"] == "model_not_found"


def test_stream_delta_carries_only_what_changed():
    chunk = ChatCompletionChunk(
        id="x", created=0, model="m", choices=[ChunkChoice(index=0, delta=Delta(), finish_reason="stop")]
    )  # fmt: skip
    dumped = chunk.model_dump()
    assert dumped["choices"][0]["delta"] == {} and dumped["choices"][0]["finish_reason"] == "stop"
    assert Delta(role="assistant", content="").model_dump() == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"stream": "yes"}, "stream"),  # no coercion, as OpenAI
        ({"max_tokens": "5"}, "max_tokens"),
        ({"n": 1.5}, "n"),
        ({"seed": -1}, "seed"),
        ({"top_k": 10**12}, "top_k"),
        ({"repetition_penalty": 1e308}, "repetition_penalty"),
        ({"temperature": float("nan")}, "temperature"),
        ({"stop": "x" * 100_000}, "stop"),
        ({"model": "a\ud800b"}, "model"),
        ({"messages": [{"role": "user", "content": "a\udfffb"}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
            "messages.0.content.0.text",
        ),
    ],
)
def test_absurd_values_are_refused_by_name(kw, param):
    err = errors_of(**kw)
    assert param in err["message"], err


def test_tool_requests():
    req = chat(tools=[TOOL])
    assert req.tool_mode == "auto"
    assert chat(tools=[TOOL], tool_choice="none").tool_mode is None
    assert chat(tools=[TOOL], tool_choice="required").tool_mode == "required"
    named = {"type": "function", "function": {"name": "f"}}
    assert chat(tools=[TOOL], tool_choice=named).tool_mode == "function:f"
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]  # fmt: skip
    assert chat(messages=history).messages[2].tool_call_id == "c1"


def test_image_url_parts():
    from lmforge.serve.protocol import ImagePart

    url = "data:image/png;base64,iVBORw0KGgo="
    parts = [{"type": "text", "text": "what is "}, {"type": "image_url", "image_url": {"url": url}},
             {"type": "text", "text": "this?"}]  # fmt: skip
    (message,) = chat(messages=[{"role": "user", "content": parts}]).messages
    assert isinstance(message.content[1], ImagePart) and message.content[1].image_url.url == url
    assert message.text() == "what is this?"  # images are not text
    bad = [{"type": "image_url", "image_url": {"url": url, "detail": "huge"}}]
    message = errors_of(messages=[{"role": "user", "content": bad}])["message"]
    assert "image_url.detail: Input should be 'auto', 'low' or 'high'" in message
    bad = [{"type": "input_audio", "input_audio": {}}]
    message = errors_of(messages=[{"role": "user", "content": bad}])["message"]
    assert "'input_audio' found using 'type' does not match any of the expected tags" in message
