"""EAGLE layer: a causal forward equals the same positions fed incrementally with past
K/V, an explicit mask restricts attention as asked, and the loss (SmoothL1 on features +
w_cls · cross-entropy to the target's distribution) against a hand computation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.eagle import EagleLayer, eagle_loss


@torch.no_grad()
def test_incremental_equals_full_and_masks():
    torch.manual_seed(0)
    layer = EagleLayer(32, 4, 2, 64).eval()
    e, f = torch.randn(1, 7, 32), torch.randn(1, 7, 32)
    full, (k, v) = layer(e, f, torch.arange(7))
    part, past = layer(e[:, :4], f[:, :4], torch.arange(4))
    rest, _ = layer(e[:, 4:], f[:, 4:], torch.arange(4, 7), past)
    torch.testing.assert_close(torch.cat([part, rest], 1), full, atol=1e-5, rtol=1e-5)
    # a query that sees only key 0 and itself equals a two-token causal forward
    mask = torch.tensor([[True, False, False, True]])
    one, _ = layer(e[:, 3:4], f[:, 3:4], torch.tensor([1]), (k[:, :, :3], v[:, :, :3]), mask)
    two, _ = layer(torch.cat([e[:, :1], e[:, 3:4]], 1), torch.cat([f[:, :1], f[:, 3:4]], 1),
                   torch.arange(2))  # fmt: skip
    torch.testing.assert_close(one[0, 0], two[0, 1], atol=1e-5, rtol=1e-5)


def test_loss_by_hand():
    torch.manual_seed(1)
    head = nn.Linear(8, 11, bias=False)
    pred, tgt = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    valid = torch.tensor([[True, True, False], [True, False, True]])
    total, reg, cls = eagle_loss(pred, tgt, head, valid, cls_weight=0.1)
    regs, clss = [], []
    for b in range(2):
        for t in range(3):
            if valid[b, t]:
                d = (pred[b, t] - tgt[b, t]).abs()
                regs.append(torch.where(d < 1, 0.5 * d**2, d - 0.5).mean())
                p = head(tgt[b, t]).softmax(-1)
                clss.append(-(p * head(pred[b, t]).log_softmax(-1)).sum())
    assert math.isclose(reg.item(), torch.stack(regs).mean().item(), rel_tol=1e-5)
    assert math.isclose(cls.item(), torch.stack(clss).mean().item(), rel_tol=1e-5)
    assert math.isclose(total.item(), reg.item() + 0.1 * cls.item(), rel_tol=1e-6)
    assert F.smooth_l1_loss(pred, tgt).item() > 0
