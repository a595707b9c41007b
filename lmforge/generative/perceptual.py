"""A perceptual loss on the evaluation classifier's features — no downloaded VGG.

LPIPS (Zhang et al. 2018, eq. 1) compares images in the activations of a pretrained network:
d(x, y) = Σ_l 1/(H_l W_l) Σ_{h,w} ‖w_l ⊙ (f̂_l(x)_{hw} − f̂_l(y)_{hw})‖², f̂ the activations
unit-normalised over channels. VQGAN (Esser et al. 2021, eq. 5) puts it beside the L1 term of
its reconstruction loss. lmforge works offline, so instead of ImageNet VGG-16 the network
is the project's own evaluation classifier (`lmforge.vision.classifier.ImageClassifier`,
trained on the run's real images), its four conv blocks the layers l, and the weights w_l
all 1 (LPIPS's learned linear layers need human similarity judgements we do not have).
The classifier is frozen: it is a fixed metric, not a player.

    loss = PerceptualLoss(classifier)(x, x_rec)   # scalar, batch mean; ≥ 0, 0 iff equal features
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.vision.classifier import ImageClassifier

__all__ = ["PerceptualLoss", "unit_normalize"]


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """f / ‖f‖₂ over the channel axis (dim 1) of [B, C, H, W] activations (LPIPS's f̂)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """``PerceptualLoss(classifier)(x, y) -> scalar``: the batch mean of the LPIPS-style
    distance in the classifier's activations after each of its conv blocks (module doc)."""

    def __init__(self, classifier: ImageClassifier) -> None:
        super().__init__()
        self.body = classifier.body
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.body.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:  # the metric network stays in eval
        super().train(mode)
        self.body.eval()
        return self

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The activations after every nonlinearity of the classifier body."""
        out, h = [], images
        for layer in self.body:
            h = layer(h)
            if not isinstance(layer, nn.Conv2d):
                out.append(h)
        return out

    def per_image(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[B] distances Σ_l mean_{hw} ‖f̂_l(x) − f̂_l(y)‖²."""
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for fx, fy in zip(self.layer_features(x), self.layer_features(y)):
            diff = (unit_normalize(fx) - unit_normalize(fy)).pow(2).sum(dim=1)
            total = total + diff.mean(dim=(1, 2))
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_image(x, y).mean()
