"""Hallucination detectors and their score: token-level uncertainty of an answer (mean and
max negative log-probability, mean entropy of the next-token distribution; Manakul et al.
2023 §5.1), SelfCheckGPT-style sample consistency (Manakul et al. 2023: the unigram variant —
how surprising the answer is under a unigram model of the resampled answers — the
disagreement rate, and the prompt variant (Manakul et al. 2023 §5.5, "SelfCheckGPT with
prompt"): the model itself is asked whether each sampled passage supports the answer, Yes or
No, and the inconsistency is the mean over samples of p(No) / (p(Yes) + p(No)), the
probabilities those continuations get), scored by AUROC (Hanley & McNeil 1982: the probability that a random
hallucinated answer scores above a random correct one, ties counting one half).

    scores = answer_uncertainty(model, prompt_ids, answer_ids)   # mean_nll, max_nll, entropy
    inconsistency = selfcheck_unigram(answer, samples)
    inconsistency = selfcheck_judge(model, tokenizer, question, answer, samples)
    auroc(scores_per_answer, is_hallucination)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lmforge.eval.verifiers import normalize_answer

__all__ = [
    "JUDGE_PROMPT",
    "answer_uncertainty",
    "auroc",
    "continuation_logprob",
    "disagreement",
    "judge_inconsistency",
    "selfcheck_judge",
    "selfcheck_unigram",
]

# SelfCheckGPT's prompt (Manakul et al. 2023 §5.5), the question added to the context
JUDGE_PROMPT = (
    "Context: {question} {sample}\n\nSentence: {question} {answer}\n\n"
    "Is the sentence supported by the context above? Answer Yes or No.\n\nAnswer:"
)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for the positive ``labels`` (higher score =
    more likely positive), by the Mann–Whitney U statistic with average ranks for ties."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative example")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_scores = s[order]
    i = 0
    while i < s.size:  # average ranks over runs of equal scores
        j = i
        while j + 1 < s.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


@torch.no_grad()
def answer_uncertainty(
    model: nn.Module, prompt_ids: Sequence[int], answer_ids: Sequence[int]
) -> dict[str, float]:
    """Token-level uncertainty of ``answer_ids`` after ``prompt_ids``: the mean and max of
    −log p(token | prefix) and the mean entropy (nats) of the model's next-token
    distributions at the answer positions."""
    if not answer_ids:
        return {"mean_nll": 0.0, "max_nll": 0.0, "entropy": 0.0}
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=device)
    logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].double()
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(1, ids[0, len(prompt_ids) :, None]).squeeze(1)
    entropy = -(logp.exp() * logp).sum(-1)
    return {"mean_nll": nll.mean().item(), "max_nll": nll.max().item(),
            "entropy": entropy.mean().item()}  # fmt: skip


def selfcheck_unigram(answer: str, samples: Sequence[str]) -> float:
    """SelfCheckGPT's unigram score (avg): the mean −log p(word) of the answer's words under
    a unigram model of the ``samples`` and the answer (add-one smoothing over their
    vocabulary). High when the samples do not support the answer."""
    words = answer.lower().split()
    if not words:
        return 0.0
    corpus = [w for s in samples for w in s.lower().split()] + words
    counts = Counter(corpus)
    total, vocab = len(corpus), len(counts)
    return float(np.mean([-math.log((counts[w] + 1) / (total + vocab)) for w in words]))


def disagreement(answer: str, samples: Sequence[str]) -> float:
    """The share of ``samples`` that differ from ``answer`` (after normalising whitespace)."""
    if not samples:
        return 0.0
    mine = normalize_answer(answer)
    return sum(normalize_answer(s) != mine for s in samples) / len(samples)


@torch.no_grad()
def continuation_logprob(model: nn.Module, prompt_ids: Sequence[int], ids: Sequence[int]) -> float:
    """log p(``ids`` | ``prompt_ids``): the sum of the continuation's token log-probs."""
    device = next(model.parameters()).device
    full = torch.tensor([list(prompt_ids) + list(ids)], device=device)
    logp = torch.log_softmax(model(full).logits[0, len(prompt_ids) - 1 : -1].double(), -1)
    return logp.gather(1, full[0, len(prompt_ids) :, None]).sum().item()


def judge_inconsistency(logp_yes: float, logp_no: float) -> float:
    """p(No) / (p(Yes) + p(No)) from the two log-probabilities (computed stably as
    σ(log p(No) − log p(Yes)))."""
    return 1.0 / (1.0 + math.exp(logp_yes - logp_no))


def selfcheck_judge(
    model: nn.Module, tokenizer, question: str, answer: str, samples: Sequence[str]
) -> float:
    """SelfCheckGPT's prompt variant: the mean over ``samples`` of `judge_inconsistency`
    for the model's continuations " Yes" / " No" after `JUDGE_PROMPT` (the sample as
    context, the answer as the sentence). 0 without samples."""
    if not samples:
        return 0.0
    yes, no = tokenizer.encode(" Yes"), tokenizer.encode(" No")
    scores = []
    for sample in samples:
        text = JUDGE_PROMPT.format(question=question, sample=sample, answer=answer)
        prompt = tokenizer.encode(text, add_special_tokens=True)
        scores.append(judge_inconsistency(continuation_logprob(model, prompt, yes),
                                          continuation_logprob(model, prompt, no)))  # fmt: skip
    return float(np.mean(scores))
