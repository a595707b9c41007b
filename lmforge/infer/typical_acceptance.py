"""Medusa's typical acceptance (Cai et al. 2024, "Medusa", §2.3.1) — fast, NOT exact.

A candidate x continuing a node whose target distribution is p (temperature-scaled) is
accepted when

    p(x) > min(ε, δ · exp(−H(p)))                                    (Medusa eq. (3))

with H the entropy: a peaked p demands a likely x, a flat p accepts more. The longest path
of accepted candidates wins (ties: the first in tree order); the next token is drawn from p
at its end (greedy at temperature 0). Unlike `lmforge.infer.tree_attention.verify_tree` this
does NOT reproduce the target's sampling distribution: it skews towards the drafts (it is
"typical", not exact). At temperature 0 the engine uses exact greedy verification instead.
Medusa's defaults: ε = 0.09 (``posterior_threshold``), δ = 0.3 (``posterior_alpha``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["typical_threshold", "verify_typical"]


def typical_threshold(probs: torch.Tensor, epsilon: float, delta: float) -> torch.Tensor:
    """min(ε, δ·exp(−H(p))) per row of ``probs`` ``[..., V]``."""
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    return torch.clamp(delta * torch.exp(-entropy), max=epsilon)


def verify_typical(
    probs: torch.Tensor,
    tokens: Sequence[int],
    parents: Sequence[int],
    epsilon: float = 0.09,
    delta: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[list[int], int]:
    """``probs`` ``[m + 1, V]`` the target's (temperature-scaled) distributions at the root
    and at each node; returns the accepted path (node indices) and the next token."""
    threshold = typical_threshold(probs, epsilon, delta)
    best: list[int] = []
    paths: dict[int, list[int]] = {-1: []}
    for i, p in enumerate(parents):
        if p not in paths:  # an ancestor was rejected
            continue
        row = p + 1
        if probs[row, tokens[i]] > threshold[row]:
            paths[i] = paths[p] + [i]
            if len(paths[i]) > len(best):
                best = paths[i]
    end = best[-1] + 1 if best else 0
    return best, int(torch.multinomial(probs[end], 1, generator=generator))
