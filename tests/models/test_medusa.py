"""Medusa heads: residual block zero-initialised (the head starts as the LM head), the
per-head losses and weights against the paper's formulas computed here by hand."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.medusa import MedusaHeads, medusa_head_losses, medusa_loss_weights


def test_init_reproduces_lm_head():
    torch.manual_seed(0)
    lm_head = nn.Linear(16, 30, bias=False)
    heads = MedusaHeads(16, 30, num_heads=3, num_layers=2, lm_head=lm_head)
    h = torch.randn(2, 5, 16)
    out = heads(h)
    assert out.shape == (3, 2, 5, 30)
    for k in range(3):
        torch.testing.assert_close(out[k], lm_head(h))
        assert heads.blocks[k][0].linear.weight.abs().sum() == 0
    with torch.no_grad():
        heads.blocks[0][0].linear.weight.normal_()
    x = h
    w, b = heads.blocks[0][0].linear.weight, heads.blocks[0][0].linear.bias
    torch.testing.assert_close(heads.blocks[0][0](x), x + F.silu(x @ w.T + b))


def test_loss_weights():
    assert medusa_loss_weights(3) == [0.8, 0.8**2, 0.8**3]
    assert medusa_loss_weights(2, scale=0.2) == [0.2 * 0.8, 0.2 * 0.8**2]


def test_head_losses_by_hand():
    torch.manual_seed(1)
    K, B, T, V = 2, 2, 6, 7
    logits = torch.randn(K, B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[1, 4] = -100
    losses, count = medusa_head_losses(logits, labels)
    for k in range(1, K + 1):
        terms = []
        for b in range(B):
            for t in range(T):
                if t + k + 1 < T and labels[b, t + k + 1] != -100:
                    lp = logits[k - 1, b, t].log_softmax(-1)
                    terms.append(-lp[labels[b, t + k + 1]])
        assert math.isclose(losses[k - 1].item(), torch.stack(terms).mean().item(), rel_tol=1e-5)
        if k == 1:
            assert count == len(terms)
    teacher = torch.randn(B, T, V)
    kl, _ = medusa_head_losses(logits, labels, teacher)
    terms = []
    for b in range(B):
        for t in range(T - 2):
            if labels[b, t + 2] != -100:
                p = teacher[b, t + 1].softmax(-1)
                terms.append((p * (p.log() - logits[0, b, t].log_softmax(-1))).sum())
    assert math.isclose(kl[0].item(), torch.stack(terms).mean().item(), rel_tol=1e-5)


def test_forward_one_equals_forward_and_follows_weight_updates():
    torch.manual_seed(0)
    heads = MedusaHeads(16, 30, 3, num_layers=2)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.2 * torch.randn_like(p))
    h = torch.randn(16)
    torch.testing.assert_close(heads.forward_one(h), heads(h))
    with torch.no_grad():
        heads.blocks[1][0].linear.weight.add_(0.5)  # the stacked copies must be rebuilt
    torch.testing.assert_close(heads.forward_one(h), heads(h))
