"""A dense glyph (OCR) head: from each image token's feature, the characters drawn in that
token's cell, as ``slots`` ordered class choices (slot 0: the glyph whose centre is leftmost
in the cell, slot 1: the next one, …; class 0 = no glyph). Two ordered slots tell "16"
from "61" even when both digits fall in one cell; across cells the tokens' positions
carry the order.

    head = GlyphHead(hidden_size=64, slots=2, classes=96)
    logits = head(features)              # [N, slots, classes]
    loss = glyph_loss(logits, targets)   # mean cross-entropy over the targets ≠ −100

An auxiliary objective that makes a vision encoder *read*: the head is a small MLP, so the
encoder's token features must carry each character's identity (and order) for it to
succeed (`lmforge.agents.glyph` builds the targets from the renderer's own text layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


class GlyphHead(nn.Module):
    """``forward(features [N, D])`` → logits ``[N, slots, classes]``: Linear-GELU-Linear."""

    def __init__(self, hidden_size: int, slots: int, classes: int) -> None:
        super().__init__()
        if hidden_size < 1 or slots < 1 or classes < 2:
            raise ValueError(
                f"glyph head: hidden {hidden_size}, slots {slots}, classes {classes} "
                "(need ≥ 1, ≥ 1, ≥ 2)"
            )
        self.slots, self.classes = slots, classes
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, slots * classes)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).view(-1, self.slots, self.classes)


def glyph_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits [N, S, C]`` against ``targets [N, S]`` (class ids,
    ``IGNORE`` = −100 left out); 0 (with grad) when every target is ignored."""
    flat, t = logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if not bool((t != IGNORE).any()):
        return flat.sum() * 0.0
    return F.cross_entropy(flat, t, ignore_index=IGNORE)


def glyph_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(right, count) over the targets that name a glyph (class > 0): the argmax's hits."""
    keep = targets > 0
    right = (logits.argmax(-1) == targets)[keep].sum()
    return right, int(keep.sum())


__all__ = ["IGNORE", "GlyphHead", "glyph_accuracy", "glyph_loss"]
