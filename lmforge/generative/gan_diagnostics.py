"""Mode-collapse diagnostics for a generator, by the evaluation classifier
(`lmforge.vision.classifier`): what share of classes it covers, how diverse its samples are
within a class, how close its samples are to the data (Fréchet distance in classifier
features, `lmforge.vision.metrics`), and — for a class-conditional generator — whether it
draws the class it is asked for.

Definitions (the benchmark's, stated once here):

- **coverage** — the share of the K classes that receive at least ``min_share / K`` of the
  samples' predicted labels (``min_share`` = 0.5: a class is covered when the generator draws
  it at least half as often as a uniform generator would);
- **diversity** — per class, the mean pairwise distance of the samples' classifier features
  divided by the same for real images of that class, averaged over classes (1 ≈ as varied as
  the data; near 0: one image per class, the within-class collapse that coverage misses);
  the class of a sample is the one asked for (conditional) or the predicted one;
- **collapsed** — coverage < 0.8 or diversity < 0.5 (or a run that diverged).
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.generative.gan_models import Generator
from lmforge.vision.classifier import ImageClassifier
from lmforge.vision.datasets import ImageDataset
from lmforge.vision.metrics import classifier_frechet_distance

COVERAGE_MIN = 0.8
DIVERSITY_MIN = 0.5

__all__ = [
    "COVERAGE_MIN",
    "DIVERSITY_MIN",
    "class_coverage",
    "class_shares",
    "diversity_ratio",
    "evaluate_generator",
    "generate",
    "is_collapsed",
    "mean_pairwise_distance",
]


def class_shares(predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Share of samples predicted as each class ([K], sums to 1)."""
    counts = torch.bincount(predicted.long().flatten(), minlength=num_classes).double()
    return counts / counts.sum().clamp(min=1)


def class_coverage(predicted: torch.Tensor, num_classes: int, min_share: float = 0.5) -> float:
    """Share of the classes drawn at least ``min_share / K`` of the time (module docstring)."""
    shares = class_shares(predicted, num_classes)
    return float((shares >= min_share / num_classes).double().mean())


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance over the distinct pairs of rows of [N, F] (0 for N < 2)."""
    n = features.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(features.double(), features.double())
    return float(d.sum() / (n * (n - 1)))


def diversity_ratio(
    fake_features: torch.Tensor,
    fake_classes: torch.Tensor,
    real_features: torch.Tensor,
    real_classes: torch.Tensor,
) -> float:
    """Mean over classes (with ≥ 2 samples of each) of the within-class mean pairwise feature
    distance of samples over that of real images; a class the generator never draws counts
    as 0 diversity only through coverage, not here. NaN when no class qualifies."""
    ratios = []
    for k in torch.unique(real_classes).tolist():
        f, r = fake_features[fake_classes == k], real_features[real_classes == k]
        real_spread = mean_pairwise_distance(r)
        if len(f) >= 2 and real_spread > 0:
            ratios.append(mean_pairwise_distance(f) / real_spread)
    return sum(ratios) / len(ratios) if ratios else float("nan")


@torch.no_grad()
def generate(
    generator: Generator, num: int, seed: int = 0, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num`` samples from seeded z, drawn as one batch (the generator's BatchNorm uses the
    batch's statistics); a conditional generator cycles the classes unless ``labels`` are
    given."""
    was_training = generator.training
    generator.eval()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num, generator.config.z_dim, generator=g)
    if generator.config.conditional and labels is None:
        labels = torch.arange(num) % generator.config.num_classes
    device = next(generator.parameters()).device
    images = generator(z.to(device), None if labels is None else labels.to(device)).cpu()
    generator.train(was_training)
    return images, labels


def is_collapsed(metrics: dict[str, Any]) -> bool:
    """The module docstring's definition on `evaluate_generator`'s metrics."""
    if metrics.get("diverged"):
        return True
    diversity = metrics.get("diversity", float("nan"))
    return metrics["coverage"] < COVERAGE_MIN or not diversity >= DIVERSITY_MIN


@torch.no_grad()
def evaluate_generator(
    generator: Generator,
    classifier: ImageClassifier,
    real: ImageDataset,
    num: int = 500,
    seed: int = 0,
    min_share: float = 0.5,
) -> dict[str, Any]:
    """``num`` samples scored against the real images ``real``: ``coverage``, ``diversity``,
    ``frechet_classifier``, ``class_shares``, ``accuracy`` and ``class_accuracy`` (conditional
    only), ``collapsed`` (module docstring)."""
    images, labels = generate(generator, num, seed)
    predicted = classifier.predict(images)["label"].cpu()
    k = real.num_classes
    fake_features = classifier.embed(images).cpu()
    real_features = classifier.embed(real.images).cpu()
    classes = labels if labels is not None else predicted
    out: dict[str, Any] = {
        "coverage": class_coverage(predicted, k, min_share),
        "diversity": diversity_ratio(fake_features, classes, real_features, real.labels),
        "frechet_classifier": classifier_frechet_distance(classifier, real.images, images),
        "class_shares": [round(v, 4) for v in class_shares(predicted, k).tolist()],
    }
    if labels is not None:
        hit = (predicted == labels).double()
        out["accuracy"] = float(hit.mean())
        out["class_accuracy"] = [
            round(float(hit[labels == c].mean()), 4) if (labels == c).any() else float("nan")
            for c in range(k)
        ]
    out["collapsed"] = is_collapsed(out)
    return out
