"""Training abstention against hallucination (the SFT variant of the study): questions the
model answers wrongly get the target "I don't know", questions it answers rightly keep
their answer, and the model continues training on those ``Q: … A: …`` lines (with the fact
documents replayed so it keeps what it knew). Measured on held-out questions as the
hallucination rate (wrong answers / all questions) against the answer rate.

The DPO variant (Rafailov et al. 2023) learns the same policy from preference pairs instead
of targets: where the model was wrong, "I don't know" is chosen over its wrong answer; where
it was right, its answer is chosen over "I don't know". Given the model's sampled answers
too, every distinct wrong answer it samples becomes a rejected side (so the pairs cover what
it would say, not one greedy answer), and ``balance`` repeats the smaller of the two kinds
of pair until both are as many (so neither "answer" nor "abstain" wins by count).

    docs = abstention_documents(items, answers)          # items: EvalItem, answers: text
    pairs = abstention_pairs(items, answers)             # {"prompt", "chosen", "rejected"}
    pairs = abstention_pairs(items, answers, samples=sampled, balance=True)
    rates = abstention_rates(held_out_items, held_out_answers)
    abstention_score(rates)                              # accuracy − hallucination rate
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lmforge.eval.knowledge import first_line
from lmforge.eval.tasks import EvalItem
from lmforge.eval.verifiers import normalize_answer

__all__ = [
    "ABSTAIN",
    "abstained",
    "abstention_documents",
    "abstention_pairs",
    "abstention_rates",
    "abstention_score",
]

ABSTAIN = "I don't know"


def abstained(answer: str) -> bool:
    """Whether ``answer`` (its first line) is the abstention."""
    return normalize_answer(first_line(answer)).lower() == ABSTAIN.lower()


def abstention_documents(
    items: Sequence[EvalItem], answers: Sequence[str],
    render_chat: Callable[[list[dict[str, Any]]], str] | None = None,
) -> list[str]:  # fmt: skip
    """One ``Q: … A: <target>`` line per item: the model's own ``answer`` when it is right,
    else `ABSTAIN`; a chat item (message-list prompt) becomes its conversation with the
    target as the assistant turn, rendered by ``render_chat``."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    docs = []
    for item, answer in zip(items, answers):
        target = first_line(answer) if item.check(first_line(answer)) else ABSTAIN
        if isinstance(item.prompt, list):
            if render_chat is None:
                raise ValueError(f"{item.key}: a chat item needs render_chat")
            docs.append(render_chat([*item.prompt, {"role": "assistant", "content": target}]))
        else:
            docs.append(f"{item.prompt} {target}")
    return docs


def abstention_pairs(
    items: Sequence[EvalItem], answers: Sequence[str],
    samples: Sequence[Sequence[str]] | None = None, balance: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """Preference records for DPO, completions with a leading space as the model writes them
    after ``A:`` (chat items: the message-list prompt, bare completions as the assistant
    turn). An item whose ``answer`` is right gives one pair: chosen its answer, rejected
    `ABSTAIN`. An item whose answer is wrong gives chosen `ABSTAIN` over its answer and
    (with ``samples``, that item's sampled answers) over every other distinct wrong,
    non-abstaining sampled answer, in order. An answer that already abstains gives no pair
    (both sides would be equal). ``balance``: the smaller of the two kinds ("answer ≻
    abstain", "abstain ≻ answer") is repeated, cycling in order, until both are as many;
    the result is the larger kind, then the repeated smaller one (without ``balance``: item
    order)."""
    if len(items) != len(answers) or (samples is not None and len(samples) != len(items)):
        raise ValueError(f"{len(items)} items but {len(answers)} answers"
                         + ("" if samples is None else f" and {len(samples)} sample lists"))  # fmt: skip
    pairs: list[dict[str, Any]] = []  # in item order
    for k, (item, answer) in enumerate(zip(items, answers)):
        mine = first_line(answer)
        if abstained(mine):
            continue
        space = "" if isinstance(item.prompt, list) else " "
        if item.check(mine):
            pairs.append({"prompt": item.prompt, "chosen": space + mine,
                          "rejected": space + ABSTAIN})  # fmt: skip
            continue
        sampled = [first_line(s) for s in (samples[k] if samples is not None else ())]
        wrong = [a for a in sampled if a and not abstained(a) and not item.check(a)]
        for w in dict.fromkeys([mine, *wrong]):  # distinct, in order; the answer first
            pairs.append({"prompt": item.prompt, "chosen": space + ABSTAIN,
                          "rejected": space + w})  # fmt: skip
    if not balance:
        return pairs
    abstain_first = [p for p in pairs if abstained(p["chosen"])]
    answer_first = [p for p in pairs if not abstained(p["chosen"])]
    if not abstain_first or not answer_first:
        return pairs
    small, big = sorted((answer_first, abstain_first), key=len)
    return big + [small[i % len(small)] for i in range(len(big))]


def abstention_rates(items: Sequence[EvalItem], answers: Sequence[str]) -> dict[str, float]:
    """``hallucination_rate`` (answered and wrong, over all items), ``answer_rate`` (not
    abstained) and ``accuracy`` (answered and right, over all items)."""
    if not items or len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    answered = [(item, first_line(a)) for item, a in zip(items, answers) if not abstained(a)]
    right = sum(bool(item.check(a)) for item, a in answered)
    n = len(items)
    return {"hallucination_rate": (len(answered) - right) / n, "answer_rate": len(answered) / n,
            "accuracy": right / n}  # fmt: skip


def abstention_score(rates: dict[str, float]) -> float:
    """``accuracy − hallucination_rate``: +1 per right answer, −1 per wrong one, 0 per
    abstention, over all questions — the quantity DPO abstention's settings are chosen by
    (on validation questions); answering everything scores 2 × accuracy − 1."""
    return rates["accuracy"] - rates["hallucination_rate"]
