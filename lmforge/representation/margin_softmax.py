"""The margin-softmax family of face-recognition losses, each a pure function on
(features x [N, D], class weights W [C, D], labels y [N]) → (logits [N, C], mean loss).

With θ_j the angle between x and W_j, the target logit f_y is replaced and the loss is the
cross-entropy of the modified logits:

| loss | target logit f_y | other logits f_j |
|---|---|---|
| softmax | W_y·x (+ b_y) | W_j·x (+ b_j) |
| NormFace (Wang et al. 2017) | s cos θ_y | s cos θ_j |
| L-Softmax (Liu et al. 2016, eq. 6) | ‖W_y‖‖x‖ ψ(θ_y) | ‖W_j‖‖x‖ cos θ_j |
| A-Softmax / SphereFace (Liu et al. 2017, eq. 7) | ‖x‖ ψ(θ_y) (‖W‖ = 1) | ‖x‖ cos θ_j |
| AM-Softmax / CosFace (Wang et al. 2018) | s (cos θ_y − m) | s cos θ_j |
| ArcFace (Deng et al. 2019, eq. 3) | s cos(θ_y + m) | s cos θ_j |

ψ(θ) = (−1)^k cos(mθ) − 2k for θ ∈ [kπ/m, (k+1)π/m], k ∈ {0, …, m−1}: monotonically
decreasing on [0, π], equal to cos(mθ) near 0. L-Softmax and SphereFace optionally anneal:
f_y = (λ · cos-logit + ψ-logit) / (1 + λ). ArcFace's cos(θ + m) is not monotonic once
θ + m > π; as in insightface it then falls back to cos θ − m sin m ("th / mm"), or, with
``easy_margin``, applies the margin only where cos θ > 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "MARGIN_LOSSES",
    "cosines",
    "psi",
    "softmax_logits",
    "normface_logits",
    "lsoftmax_logits",
    "sphereface_logits",
    "cosface_logits",
    "arcface_logits",
    "margin_loss",
]


def cosines(features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """cos θ [N, C] between every feature and every class weight."""
    return F.normalize(features, dim=1, eps=eps) @ F.normalize(weights, dim=1, eps=eps).T


def psi(theta: torch.Tensor, m: int) -> torch.Tensor:
    """ψ(θ) = (−1)^k cos(mθ) − 2k with k = ⌊mθ/π⌋ (clamped to m − 1 at θ = π)."""
    k = torch.clamp(torch.floor(m * theta / math.pi), 0, m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(m * theta) - 2.0 * k


def replace_target(
    logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """``logits`` with column ``labels[i]`` of row i set to ``target[i]`` (differentiably)."""
    onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return logits * (1 - onehot) + target.unsqueeze(1) * onehot


def softmax_logits(features: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """W x + b: the plain softmax classifier (``labels`` unused, kept for one signature)."""
    logits = features @ weights.T
    return logits if bias is None else logits + bias


def normface_logits(features: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                    scale: float = 16.0) -> torch.Tensor:  # fmt: skip
    """s cos θ_j for every class (normalised features and weights, no margin)."""
    return scale * cosines(features, weights)


def target_theta(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    cos_y = cos.gather(1, labels.view(-1, 1)).squeeze(1)
    return torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))


def lsoftmax_logits(features: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                    margin: int = 2, anneal: float = 0.0) -> torch.Tensor:  # fmt: skip
    """‖W_j‖‖x‖ cos θ_j, with the target's cos θ_y replaced by ψ(θ_y) (L-Softmax)."""
    logits = features @ weights.T
    norms = features.norm(dim=1) * weights[labels].norm(dim=1)
    theta = target_theta(cosines(features, weights), labels)
    plain = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    target = (anneal * plain + norms * psi(theta, margin)) / (1 + anneal)
    return replace_target(logits, labels, target)


def sphereface_logits(features: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                      margin: int = 4, anneal: float = 0.0) -> torch.Tensor:  # fmt: skip
    """A-Softmax: L-Softmax with normalised weights (‖W_j‖ = 1, no bias)."""
    return lsoftmax_logits(features, F.normalize(weights, dim=1), labels, margin, anneal)


def cosface_logits(features: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                   scale: float = 16.0, margin: float = 0.35) -> torch.Tensor:  # fmt: skip
    """AM-Softmax / CosFace: s (cos θ_y − m) for the target, s cos θ_j otherwise."""
    cos = cosines(features, weights)
    cos_y = cos.gather(1, labels.view(-1, 1)).squeeze(1)
    return scale * replace_target(cos, labels, cos_y - margin)


def arcface_logits(
    features: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 16.0,
    margin: float = 0.5,
    easy_margin: bool = False,
) -> torch.Tensor:
    """ArcFace: s cos(θ_y + m) for the target. Where θ_y + m > π (cos θ_y < cos(π − m)) the
    target is cos θ_y − m sin m instead; with ``easy_margin`` the margin applies only where
    cos θ_y > 0."""
    cos = cosines(features, weights)
    cos_y = cos.gather(1, labels.view(-1, 1)).squeeze(1).clamp(-1.0, 1.0)
    sin_y = torch.sqrt((1.0 - cos_y**2).clamp_min(0.0))
    phi = cos_y * math.cos(margin) - sin_y * math.sin(margin)  # cos(θ + m)
    if easy_margin:
        target = torch.where(cos_y > 0, phi, cos_y)
    else:
        threshold = math.cos(math.pi - margin)
        target = torch.where(cos_y > threshold, phi, cos_y - math.sin(math.pi - margin) * margin)
    return scale * replace_target(cos, labels, target)


MARGIN_LOSSES = {
    "softmax": softmax_logits,
    "normface": normface_logits,
    "lsoftmax": lsoftmax_logits,
    "sphereface": sphereface_logits,
    "cosface": cosface_logits,
    "arcface": arcface_logits,
}


def margin_loss(kind: str, features: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                **kw: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(logits, mean cross-entropy) of the margin loss ``kind`` (a key of `MARGIN_LOSSES`)."""
    if kind not in MARGIN_LOSSES:
        raise ValueError(f"unknown margin loss {kind!r}; choose from {', '.join(MARGIN_LOSSES)}")
    logits = MARGIN_LOSSES[kind](features, weights, labels, **kw)
    return logits, F.cross_entropy(logits, labels)
