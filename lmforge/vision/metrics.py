"""Image-generation metrics: conditional accuracy, Fréchet distance in the evaluation
classifier's feature space (with real-vs-real as its floor), bits per dimension.

The Fréchet distance between Gaussians N(μ₁, Σ₁), N(μ₂, Σ₂) is
‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}) (Dowson & Landau 1982; Heusel et al. 2017 use it
on Inception features as "FID"). Here the features are `ImageClassifier.features`, hence
the name ``classifier_frechet_distance``; numbers are comparable only within one dataset and
one classifier, and the real-vs-real distance (two disjoint real sets) is the floor.
"""

from __future__ import annotations

import math

import torch

from lmforge.vision.classifier import ImageClassifier

__all__ = [
    "bits_per_dim",
    "classifier_frechet_distance",
    "conditional_accuracy",
    "frechet_distance",
    "gaussian_stats",
]


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of [N, F] features, in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^{1/2}; the last trace is Σ √λᵢ over the
    eigenvalues of the symmetric PSD matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2} (same spectrum as Σ₁Σ₂)."""
    evals, evecs = torch.linalg.eigh(cov1.double())
    sqrt1 = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    inner = torch.linalg.eigvalsh(sqrt1 @ cov2.double() @ sqrt1).clamp(min=0)
    diff = (mu1.double() - mu2.double()).pow(2).sum()
    value = diff + torch.trace(cov1.double()) + torch.trace(cov2.double()) - 2 * inner.sqrt().sum()
    return float(value.clamp(min=0))


def classifier_frechet_distance(
    classifier: ImageClassifier, real: torch.Tensor, generated: torch.Tensor
) -> float:
    """`frechet_distance` between the classifier features of two image sets."""
    return frechet_distance(
        *gaussian_stats(classifier.embed(real)), *gaussian_stats(classifier.embed(generated))
    )


def conditional_accuracy(
    classifier: ImageClassifier, images: torch.Tensor, asked: torch.Tensor, head: str = "label"
) -> float:
    """Share of ``images`` the classifier assigns to the class each was generated for."""
    predicted = classifier.predict(images)[head]
    return float((predicted == asked.to(predicted.device)).float().mean())


def bits_per_dim(
    nll_nats: torch.Tensor | float, num_dims: int, bin_width: float = 2 / 255
) -> float:
    """Bits per dimension of data on a grid of ``bin_width`` (8-bit pixels mapped to [-1, 1]:
    2/255) from a continuous density's NLL in nats per example: the dequantised discrete NLL
    is −log p(x) − D log w (Theis et al. 2016, §3.1), divided by D ln 2."""
    nll = float(torch.as_tensor(nll_nats, dtype=torch.float64).mean())
    return (nll - num_dims * math.log(bin_width)) / (num_dims * math.log(2))
