"""OpenAI request → engine inputs, engine outputs → OpenAI pieces (no server needed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from lmforge.serve.protocol import APIError, ChatCompletionRequest, ChatMessage, CompletionRequest
from lmforge.serve.translate import (
    MIN_LOGPROB,
    ServerLimits,
    chat_logprobs,
    chat_prompt_ids,
    completion_logprobs,
    completion_prompt_ids,
    constraint_spec,
    generation_budget,
)


@pytest.fixture(scope="module")
def tok(model_dir):
    from lmforge.tokenizer import load_tokenizer

    return load_tokenizer(model_dir)


@dataclass
class TL:  # the engine's TokenLogprob
    token_id: int
    logprob: float
    top: list


LIMITS = ServerLimits(max_model_len=100, max_tokens=40)


def test_generation_budget():
    assert generation_budget(10, None, LIMITS) == 40  # default: the per-request cap
    assert generation_budget(80, None, LIMITS) == 20  # ... or what fits the context
    assert generation_budget(10, 25, LIMITS) == 25
    cases = [(0, None, None), (100, None, "context_length_exceeded"),
             (10, 41, None), (70, 31, "context_length_exceeded")]  # fmt: skip
    for prompt_len, asked, code in cases:
        with pytest.raises(APIError) as info:
            generation_budget(prompt_len, asked, LIMITS, "prompt")
        assert info.value.status == 400 and info.value.code == code
        assert info.value.param == ("max_tokens" if asked else "prompt")


def test_chat_prompt_uses_the_template(tok):
    msgs = [
        ChatMessage(role="developer", content="be brief"),
        ChatMessage(role="user", content="hi"),
    ]
    ids = chat_prompt_ids(tok, msgs)
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        add_generation_prompt=True,
    )
    assert tok.decode(ids) == expected and expected.endswith("<|im_start|>assistant\n")
    tok_without = type(tok)(tok.backend, tok.special_tokens, chat_template=None)
    with pytest.raises(APIError, match="chat template"):
        chat_prompt_ids(tok_without, msgs)


def test_completion_prompts(tok):
    bos = tok.bos_token_id
    assert completion_prompt_ids(tok, "ab") == [[bos, *tok.encode("ab")]]
    assert completion_prompt_ids(tok, ["a", "b"]) == [
        [bos, *tok.encode("a")],
        [bos, *tok.encode("b")],
    ]
    assert completion_prompt_ids(tok, [5, 6]) == [[5, 6]]
    assert completion_prompt_ids(tok, [[5], [6, 7]]) == [[5], [6, 7]]
    with pytest.raises(APIError, match=r"prompt\[1\]: token ids must be in"):
        completion_prompt_ids(tok, [[5], [tok.vocab_size]])


def test_constraint_spec():
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    schema = {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    assert constraint_spec(ChatCompletionRequest(**base, response_format=fmt)) == {
        "json_schema": schema
    }
    req = ChatCompletionRequest(**base, response_format={"type": "json_object"})
    assert constraint_spec(req) == {"json_object": True}
    assert constraint_spec(ChatCompletionRequest(**base, response_format={"type": "text"})) is None
    assert constraint_spec(CompletionRequest(model="m", prompt="x", guided_regex="a+")) == {
        "regex": "a+"
    }


def test_logprob_shapes(tok):
    a, b = tok.encode("ab")[:1] + tok.encode("c")[:1]
    items = [TL(a, -0.5, [(a, -0.5), (b, -1.5)]), TL(b, -math.inf, [(b, -math.inf)])]
    chat = chat_logprobs(tok, items).model_dump()["content"]
    assert [c["token"] for c in chat] == [tok.decode([a]), tok.decode([b])]
    assert chat[0]["logprob"] == -0.5 and chat[1]["logprob"] == MIN_LOGPROB  # JSON has no -inf
    assert chat[0]["bytes"] == list(tok.decode([a]).encode())
    assert [t["logprob"] for t in chat[0]["top_logprobs"]] == [-0.5, -1.5]
    legacy = completion_logprobs(tok, items, start_offset=3).model_dump()
    assert legacy["tokens"] == [c["token"] for c in chat]
    assert legacy["text_offset"] == [3, 3 + len(tok.decode([a]))]
    assert legacy["top_logprobs"][0] == {tok.decode([a]): -0.5, tok.decode([b]): -1.5}
    assert chat_logprobs(tok, None) is None and completion_logprobs(tok, None) is None


def test_prompt_char_bound_is_a_true_bound(model_dir):
    """No text longer than the bound fits: the densest text (repeating the longest token)
    still needs more than max_model_len tokens, and size checks refuse by characters."""
    from lmforge.serve.translate import ServerLimits, check_prompt_size, prompt_char_bound
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    bound = prompt_char_bound(tok, 16)
    vocab = tok.backend.get_vocab(with_added_tokens=False)
    longest = max(vocab, key=len)
    text = tok.decode([vocab[longest]]) * (bound // len(longest) + 1)
    assert len(text) > bound and len(tok.encode(text)) > 16
    limits = ServerLimits(16, 8, max_prompt_chars=bound, max_messages=4)
    check_prompt_size(["x" * bound], 4, limits, "messages")  # at the bound: tokenized later
    with pytest.raises(APIError, match="characters"):
        check_prompt_size(["x" * bound, "y"], 2, limits, "messages")
    with pytest.raises(APIError, match="5 messages"):
        check_prompt_size([], 5, limits, "messages")
