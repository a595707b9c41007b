"""Synthetic chats: deterministic, well-formed, correct answers, usable by the SFT formats."""

from __future__ import annotations

import re

from lmforge.data.formats import load_sft_examples, tokenize_conversation
from lmforge.data.tasks.chat import synthetic_chats, write_chat_jsonl
from lmforge.data.tasks.corpus import synthetic_corpus
from lmforge.tokenizer import Tokenizer


def test_deterministic_and_well_formed():
    chats = synthetic_chats(300, seed=3)
    assert chats == synthetic_chats(300, seed=3)
    assert chats != synthetic_chats(300, seed=4)
    for messages in chats:
        roles = [m["role"] for m in messages]
        body = roles[1:] if roles[0] == "system" else roles
        assert body == ["user", "assistant"] * (len(body) // 2) and body
        assert all(m["content"].strip() for m in messages)
    assert any(m[0]["role"] == "system" for m in chats)
    assert any(len(m) >= 4 for m in chats)  # some second turns


def test_arithmetic_answers_are_correct():
    checked = 0
    for messages in synthetic_chats(500, seed=0):
        for user, reply in zip(messages, messages[1:]):
            q = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", user["content"])
            if user["role"] == "user" and q:
                a, op, b = int(q[1]), q[2], int(q[3])
                assert reply["content"] == f"{a} {op} {b} = {a + b if op == '+' else a - b}."
                checked += 1
    assert checked > 100


def test_jsonl_round_trip_through_sft_formats(tmp_path):
    path = write_chat_jsonl(tmp_path / "chat.jsonl", 50, seed=1)
    tok = Tokenizer.train(synthetic_corpus(200), vocab_size=400)
    examples, report = load_sft_examples([path], tok)
    assert len(examples) == 50 and report.num_skipped == 0
    direct = tokenize_conversation(synthetic_chats(50, seed=1)[0], tok)
    assert examples[0].input_ids == direct.input_ids and examples[0].labels == direct.labels
