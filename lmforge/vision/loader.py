"""An endless, resumable batch loader over an `ImageDataset` for the one Trainer.

Batches are ``{"images": [B, C, H, W], "labels": [B]}`` plus, per item, any ``extras``
(e.g. the paired noise of rectified-flow reflow). Each epoch is a permutation drawn
from ``(seed, epoch)``, so the stream is a pure function of the seed and the position, and
``state_dict()`` (epoch, position) is all a checkpoint needs for an exact resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from lmforge.vision.datasets import ImageDataset

__all__ = ["ImageLoader"]


class ImageLoader:
    """Shuffled batches of ``batch_size`` forever (an epoch's tail joins the next epoch)."""

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        seed: int = 0,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be ≥ 1")
        self.dataset = dataset
        self.extras = dict(extras or {})
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.dataset), generator=g)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> dict[str, torch.Tensor]:
        parts, need = [], self.batch_size
        while need:
            perm = self.permutation(self.epoch)
            take = perm[self.position : self.position + need]
            parts.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= len(perm):
                self.epoch, self.position = self.epoch + 1, 0
        index = torch.cat(parts)
        batch = {"images": self.dataset.images[index], "labels": self.dataset.labels[index]}
        return {**batch, **{k: v[index] for k, v in self.extras.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
