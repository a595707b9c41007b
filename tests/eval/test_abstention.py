"""lmforge/eval/abstention.py: abstention targets and rates, by hand."""

from __future__ import annotations

import pytest

from lmforge.eval.abstention import (
    ABSTAIN,
    abstained,
    abstention_documents,
    abstention_pairs,
    abstention_rates,
    abstention_score,
)
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


def test_sampled_wrong_answers_are_rejected_too_and_balance_repeats_the_smaller_kind():
    items = [item("Paris"), item("1987"), item("baker")]
    answers = ["Paris", "1990", "poet"]
    samples = [["Rome", "Paris"], ["1990", "I don't know", "1987", "1955\nQ:", "1955"], ["poet"]]
    pairs = abstention_pairs(items, answers, samples=samples)
    wrong = [(p["prompt"], p["rejected"]) for p in pairs if p["chosen"] == f" {ABSTAIN}"]
    # the right item keeps one pair (its sampled "Rome" is not used); the wrong ones reject
    # their answer and each other distinct wrong, non-abstaining sample, in order
    assert wrong == [("Q: 1987? A:", " 1990"), ("Q: 1987? A:", " 1955"),
                     ("Q: baker? A:", " poet")]  # fmt: skip
    assert pairs[0] == {"prompt": "Q: Paris? A:", "chosen": " Paris", "rejected": f" {ABSTAIN}"}
    balanced = abstention_pairs(items, answers, samples=samples, balance=True)
    assert balanced == pairs[1:] + [pairs[0]] * 3  # 3 "abstain ≻ answer", 3 "answer ≻ abstain"
    only_wrong = abstention_pairs(items[1:], answers[1:], balance=True)
    assert only_wrong == abstention_pairs(items[1:], answers[1:])  # nothing to balance against
    with pytest.raises(ValueError, match="3 items but 3 answers and 1 sample lists"):
        abstention_pairs(items, answers, samples=[["x"]])


def test_score_counts_right_plus_one_wrong_minus_one():
    rates = abstention_rates([item("a"), item("b"), item("c"), item("d")],
                             ["a", "b", "x", "I don't know"])  # fmt: skip
    assert abstention_score(rates) == pytest.approx(2 / 4 - 1 / 4)
