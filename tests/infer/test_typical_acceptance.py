"""Typical acceptance: the threshold min(ε, δ·exp(−H(p))) by hand, the longest accepted
path through a tree, and the next token drawn at its end."""

from __future__ import annotations

import math

import torch

from lmforge.infer.typical_acceptance import typical_threshold, verify_typical


def test_threshold_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25])
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert math.isclose(typical_threshold(p, 0.09, 0.3).item(), min(0.09, 0.3 * math.exp(-h)),
                        rel_tol=1e-6)  # fmt: skip
    assert math.isclose(typical_threshold(p, 0.01, 0.3).item(), 0.01, rel_tol=1e-6)


def test_longest_accepted_path():
    # root row: token 1 likely; node rows: under node 1 (token 1), token 2 likely
    probs = torch.tensor([
        [0.01, 0.98, 0.01],  # root
        [0.98, 0.01, 0.01],  # node 0 (token 0, rejected)
        [0.01, 0.01, 0.98],  # node 1 (token 1)
        [1.0, 0.0, 0.0],     # node 2 (token 2 under node 1)
        [0.0, 1.0, 0.0],     # node 3 (token 0 under node 0)
    ])  # fmt: skip
    path, token = verify_typical(probs, [0, 1, 2, 0], [-1, -1, 1, 0], 0.09, 0.3)
    assert path == [1, 2] and token == 0  # node 3's parent was rejected
    path, token = verify_typical(probs, [2, 0], [-1, -1], 0.09, 0.3)
    assert path == [] and token == 1
