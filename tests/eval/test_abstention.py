"""lmforge/eval/abstention.py: abstention targets and rates, by hand."""

from __future__ import annotations

import pytest

from lmforge.eval.abstention import ABSTAIN, abstained, abstention_documents, abstention_rates
from lmforge.eval.tasks import EvalItem


def item(answer: str) -> EvalItem:
    return EvalItem(answer, f"Q: {answer}? A:", answer, lambda a, r=answer: a.strip() == r)


def test_documents_keep_right_answers_and_abstain_on_wrong_ones():
    items = [item("Paris"), item("1987")]
    docs = abstention_documents(items, [" Paris\nQ: more", " 1990"])
    assert docs == ["Q: Paris? A: Paris", f"Q: 1987? A: {ABSTAIN}"]
    with pytest.raises(ValueError, match="2 items but 1 answers"):
        abstention_documents(items, ["x"])


def test_rates():
    items = [item("a"), item("b"), item("c"), item("d")]
    answers = ["a", " I don't  know\nQ:", "x", "i don't know"]
    assert abstained(answers[1]) and abstained(answers[3]) and not abstained("I know")
    assert abstention_rates(items, answers) == {"hallucination_rate": 0.25,
                                                "answer_rate": 0.5, "accuracy": 0.25}  # fmt: skip


def test_dpo_pairs_prefer_abstaining_where_wrong_and_answering_where_right():
    from lmforge.eval.abstention import abstention_pairs

    items = [item("Paris"), item("1987"), item("baker"), item("x")]
    pairs = abstention_pairs(items, [" Paris\nQ: more", " 1990", "I don't know", ""])
    assert pairs == [
        {"prompt": "Q: Paris? A:", "chosen": " Paris", "rejected": f" {ABSTAIN}"},
        {"prompt": "Q: 1987? A:", "chosen": f" {ABSTAIN}", "rejected": " 1990"},
        {"prompt": "Q: x? A:", "chosen": f" {ABSTAIN}", "rejected": " "},
    ]  # the abstaining answer gives no pair (chosen would equal rejected)
    with pytest.raises(ValueError, match="2 items but 1 answers"):
        abstention_pairs(items[:2], ["x"])


def test_chat_items_render_their_conversations_and_pairs_keep_the_messages():
    from lmforge.eval.abstention import abstention_pairs

    messages = [{"role": "user", "content": "Where?"}]
    chat = EvalItem("k", messages, "Paris", lambda a: a.strip() == "Paris")

    def render(turns):
        return "|".join(f"{t['role']}:{t['content']}" for t in turns)

    assert abstention_documents([chat, chat], ["Paris", "Rome"], render_chat=render) == [
        "user:Where?|assistant:Paris", f"user:Where?|assistant:{ABSTAIN}"]  # fmt: skip
    assert abstention_pairs([chat], ["Rome"]) == [
        {"prompt": messages, "chosen": ABSTAIN, "rejected": "Rome"}]  # fmt: skip
    with pytest.raises(ValueError, match="k: a chat item needs render_chat"):
        abstention_documents([chat], ["Rome"])
