"""The evaluation classifier: a small CNN trained here on real images of a dataset, used to
score generated images (does a sample show what was asked?) and as the feature space of the
Fréchet distance (`lmforge.vision.metrics`). It is not Inception: its numbers compare models
on the same dataset, not across papers.

    clf = train_classifier(train_set, steps=400)       # heads: "label" (+ the attributes)
    clf.predict(images)["label"]; clf.features(images)  # [N, F]
    clf.save(folder); clf = load_classifier(folder)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.io import atomic_path, atomic_write_json
from lmforge.vision.datasets import ImageDataset

__all__ = ["ImageClassifier", "load_classifier", "train_classifier"]


class ImageClassifier(nn.Module):
    """Four 3×3 conv layers (two of stride 2), global average and max pool → features, one
    linear head per attribute (``heads``: name → number of classes)."""

    def __init__(self, channels: int, heads: dict[str, int], width: int = 32) -> None:
        super().__init__()
        self.channels, self.heads_spec, self.width = channels, dict(heads), width
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.GELU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(4 * width, n) for k, n in heads.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 4·width] pooled features (the Fréchet distance's space)."""
        h = self.body(images)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        self.eval()
        outs = [self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return {k: torch.cat([o[k] for o in outs]).argmax(-1) for k in self.heads_spec}

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        self.eval()
        return torch.cat(
            [self.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        )

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "classifier.safetensors") as path:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))
        spec = {"channels": self.channels, "heads": self.heads_spec, "width": self.width}
        atomic_write_json(folder / "classifier.json", spec)
        return folder


def load_classifier(folder: str | os.PathLike) -> ImageClassifier:
    folder = Path(folder)
    spec = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
    model = ImageClassifier(spec["channels"], spec["heads"], spec["width"])
    model.load_state_dict(load_file(str(folder / "classifier.safetensors")))
    return model.eval()


def dataset_targets(dataset: ImageDataset) -> dict[str, torch.Tensor]:
    return {"label": dataset.labels, **dataset.attributes}


def train_classifier(
    dataset: ImageDataset,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    augment_noise: float = 0.05,
    width: int = 32,
) -> ImageClassifier:
    """Cross-entropy on every head, AdamW, small Gaussian noise on the inputs (so that
    slightly imperfect samples are judged by their content, not their noise)."""
    g = torch.Generator().manual_seed(seed)
    targets = dataset_targets(dataset)
    heads = {"label": dataset.num_classes}
    heads.update({k: len(v) for k, v in dataset.attribute_names.items()})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ImageClassifier(dataset.shape[0], heads, width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(dataset), (batch_size,), generator=g)
        x = dataset.images[idx]
        x = x + augment_noise * torch.randn(x.shape, generator=g)
        logits = model(x)
        loss = sum(F.cross_entropy(logits[k], targets[k][idx]) for k in heads)
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item())
        opt.step()
    return model.eval()
