"""Training abstention against hallucination (the SFT variant of the study): questions the
model answers wrongly get the target "I don't know", questions it answers rightly keep
their answer, and the model continues training on those ``Q: … A: …`` lines (with the fact
documents replayed so it keeps what it knew). Measured on held-out questions as the
hallucination rate (wrong answers / all questions) against the answer rate.

The DPO variant (Rafailov et al. 2023) learns the same policy from preference pairs instead
of targets: where the model was wrong, "I don't know" is chosen over its wrong answer; where
it was right, its answer is chosen over "I don't know".

    docs = abstention_documents(items, answers)          # items: EvalItem, answers: text
    pairs = abstention_pairs(items, answers)             # {"prompt", "chosen", "rejected"}
    rates = abstention_rates(held_out_items, held_out_answers)
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


def abstention_pairs(items: Sequence[EvalItem], answers: Sequence[str]) -> list[dict[str, Any]]:
    """One preference record per item for DPO, completions with a leading space as the
    model writes them after ``A:`` (chat items: the message-list prompt, bare completions
    as the assistant turn): wrong → chosen `ABSTAIN`, rejected its answer; right → chosen
    its answer, rejected `ABSTAIN`. An answer that already abstains gives no pair (both
    sides would be equal)."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    pairs = []
    for item, answer in zip(items, answers):
        mine = first_line(answer)
        if abstained(mine):
            continue
        right = bool(item.check(mine))
        chosen, rejected = (mine, ABSTAIN) if right else (ABSTAIN, mine)
        space = "" if isinstance(item.prompt, list) else " "
        pairs.append(
            {"prompt": item.prompt, "chosen": space + chosen, "rejected": space + rejected}
        )
    return pairs


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
