"""The perceptual loss on the evaluation classifier's features: the LPIPS-style formula by
hand, metric properties, a frozen network, and more distance for more distortion."""

from __future__ import annotations

import pytest
import torch

from lmforge.generative.perceptual import PerceptualLoss, unit_normalize
from lmforge.vision.classifier import ImageClassifier, train_classifier
from lmforge.vision.datasets import load_image_dataset


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits", 8, 64, seed=0, split="train")


@pytest.fixture(scope="module")
def classifier(digits):
    return train_classifier(digits, steps=20, width=8)


def test_matches_the_formula_computed_by_hand(classifier):
    torch.manual_seed(0)
    x, y = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    want = torch.zeros(3)
    hx, hy = x, y
    for layer in classifier.body:
        hx, hy = layer(hx), layer(hy)
        if isinstance(layer, torch.nn.GELU):  # after each conv block
            nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            want += ((nx - ny) ** 2).sum(1).mean((1, 2))
    loss = PerceptualLoss(classifier)
    assert torch.allclose(loss.per_image(x, y), want, atol=1e-6)
    assert torch.allclose(loss(x, y), want.mean(), atol=1e-6)


def test_metric_properties_and_monotone_in_distortion(classifier, digits):
    loss = PerceptualLoss(classifier)
    x = digits.images[:32]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    assert loss(x, x).item() == 0.0
    small, big = x + 0.05 * noise, x + 0.5 * noise
    assert torch.allclose(loss(x, big), loss(big, x))
    assert 0 < loss(x, small).item() < loss(x, big).item()
    f = unit_normalize(torch.randn(2, 5, 3, 3))
    assert torch.allclose(f.pow(2).sum(1), torch.ones(2, 3, 3), atol=1e-5)


def test_network_is_frozen_and_gradients_reach_the_images():
    clf = ImageClassifier(1, {"label": 3}, width=8)
    loss = PerceptualLoss(clf)
    loss.train()
    assert not loss.body.training  # a fixed metric: stays in eval mode
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss(x, torch.zeros(2, 1, 8, 8)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in clf.body.parameters())
