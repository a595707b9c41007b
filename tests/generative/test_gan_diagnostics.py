"""Mode-collapse diagnostics: coverage, pairwise distances and diversity against hand /
brute-force computations, the collapse rule, and a generator scored end to end."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmforge.generative.gan_diagnostics import (
    class_coverage,
    class_shares,
    diversity_ratio,
    evaluate_generator,
    generate,
    is_collapsed,
    mean_pairwise_distance,
)
from lmforge.generative.gan_models import GANNetConfig, GANPair
from lmforge.vision.classifier import ImageClassifier
from lmforge.vision.datasets import ImageDataset


def test_coverage_and_shares():
    predicted = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0])  # K = 4: shares 5/8, 2/8, 1/8, 0
    torch.testing.assert_close(class_shares(predicted, 4), torch.tensor([5, 2, 1, 0]) / 8.0,
                               check_dtype=False)  # fmt: skip
    # covered: share ≥ 0.5 / 4 = 0.125 → classes 0, 1, 2
    assert class_coverage(predicted, 4) == 0.75
    assert class_coverage(predicted, 4, min_share=1.0) == 0.5  # ≥ 0.25: classes 0, 1


def test_mean_pairwise_distance_is_brute_force():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    pairs = [(x[i] - x[j]).norm().item() for i, j in itertools.combinations(range(6), 2)]
    assert mean_pairwise_distance(x) == pytest.approx(sum(pairs) / len(pairs), rel=1e-6)
    assert mean_pairwise_distance(x[:1]) == 0.0


def test_diversity_ratio():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(20, 4, generator=g)
    real_classes = torch.arange(20) % 2
    same = torch.zeros(10, 4) + real[0]  # one image per class: collapse within classes
    assert diversity_ratio(same, torch.arange(10) % 2, real, real_classes) == 0.0
    assert diversity_ratio(real, real_classes, real, real_classes) == pytest.approx(1.0)
    assert math.isnan(diversity_ratio(real[:1], real_classes[:1], real, real_classes))


def test_collapse_rule():
    assert not is_collapsed({"coverage": 0.9, "diversity": 0.8})
    assert is_collapsed({"coverage": 0.7, "diversity": 0.8})
    assert is_collapsed({"coverage": 1.0, "diversity": 0.3})
    assert is_collapsed({"coverage": 1.0, "diversity": float("nan")})
    assert is_collapsed({"coverage": 1.0, "diversity": 1.0, "diverged": True})


def test_evaluate_generator_scores_a_generator():
    torch.manual_seed(0)
    pair = GANPair(GANNetConfig([1, 8, 8], z_dim=4, width=4, num_classes=3))
    images, labels = generate(pair.generator, 7, seed=3)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    again, _ = generate(pair.generator, 7, seed=3)
    torch.testing.assert_close(images, again)  # seeded
    assert pair.generator.training  # (the mode is restored)
    real = ImageDataset("toy", torch.rand(30, 1, 8, 8) * 2 - 1, torch.arange(30) % 3,
                        ["a", "b", "c"])  # fmt: skip
    classifier = ImageClassifier(1, {"label": 3}, width=4)
    out = evaluate_generator(pair.generator, classifier, real, num=12)
    predicted = classifier.predict(generate(pair.generator, 12, 0)[0])["label"]
    labels = torch.arange(12) % 3
    assert out["accuracy"] == pytest.approx(float((predicted == labels).float().mean()))
    assert out["coverage"] == class_coverage(predicted, 3)
    assert out["frechet_classifier"] >= 0 and len(out["class_accuracy"]) == 3
    assert out["collapsed"] == is_collapsed(out)
