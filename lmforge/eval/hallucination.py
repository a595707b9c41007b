"""Hallucination detectors and their score: token-level uncertainty of an answer (mean and
max negative log-probability, mean entropy of the next-token distribution; Manakul et al.
2023 §5.1), SelfCheckGPT-style sample consistency (Manakul et al. 2023: the unigram variant —
how surprising the answer is under a unigram model of the resampled answers — and the
disagreement rate), scored by AUROC (Hanley & McNeil 1982: the probability that a random
hallucinated answer scores above a random correct one, ties counting one half).

    scores = answer_uncertainty(model, prompt_ids, answer_ids)   # mean_nll, max_nll, entropy
    inconsistency = selfcheck_unigram(answer, samples)
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

__all__ = ["answer_uncertainty", "auroc", "disagreement", "selfcheck_unigram"]


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
