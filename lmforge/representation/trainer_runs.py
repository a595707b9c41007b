"""The small pieces that put a non-token model through the one `Trainer`
(`lmforge.train.loop`): the foundations runs (CPC, the margin losses, OadTR) train this way,
so each gets the Trainer's progress bar, ``metrics.jsonl``, atomic checkpoints in its run
folder and exact resume when the same command runs again.

- `PositionLoader`: an endless loader whose batch ``i`` is a pure function of ``i`` (synthetic
  data drawn from a seed derived from the position); its state is the position, so a resumed
  run sees exactly the batches an uninterrupted one would;
- `SavedNet`: wraps a network with ``config`` (a description written as ``config.json``) and
  ``save_weights_folder`` (``model.safetensors``), the hook `lmforge.train.checkpoint` calls
  for models that are not transformers;
- `MeanLoss`: turns ``loss_fn(net, batch) -> (mean loss, metrics)`` into an `Objective`
  (one unit per step, so the Trainer's mean is that loss);
- `fit_net`: the `RunConfig` (plain Adam: constant lr, no warmup / weight decay / clipping)
  and the `Trainer` run; returns the summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.io import atomic_path, atomic_write_json
from lmforge.train.config import RunConfig
from lmforge.train.loop import Trainer
from lmforge.train.objective import Batch, LossOutput

__all__ = ["FoundationsConfig", "PositionLoader", "SavedNet", "MeanLoss", "fit_net"]


@dataclass
class FoundationsConfig(RunConfig):
    """A `RunConfig` plus ``method``: what is trained (a resume of another method in the same
    folder is then a config change the Trainer reports)."""

    method: dict[str, Any] = field(default_factory=dict)


class PositionLoader:
    """Endless batches ``make_batch(0), make_batch(1), …``; ``state_dict()`` is the position."""

    def __init__(self, make_batch: Callable[[int], Batch]) -> None:
        self.make_batch = make_batch
        self.position = 0

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.make_batch(self.position)
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class SavedNet(nn.Module):
    """``net`` with the checkpoint hooks: ``config`` and ``save_weights_folder``."""

    def __init__(self, net: nn.Module, description: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.config = dict(description)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        """``config.json`` (the description) and ``model.safetensors``, atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", self.config)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        return folder


class MeanLoss:
    """``loss_fn(net, batch) -> (mean loss, metrics)`` as an `Objective` with one unit."""

    def __init__(self, loss_fn: Callable[[nn.Module, Batch], tuple[torch.Tensor, dict]]) -> None:
        self.loss_fn = loss_fn

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        net = model.net if isinstance(model, SavedNet) else model
        loss, metrics = self.loss_fn(net, batch)
        return LossOutput(loss, 1, {k: float(v) for k, v in metrics.items() if k != "loss"})


def fit_net(
    net: nn.Module, description: dict[str, Any], loader: PositionLoader,
    loss_fn: Callable[[nn.Module, Batch], tuple[torch.Tensor, dict]], run_dir: str | Path,
    *, steps: int, lr: float, seed: int = 0, save_every: int = 50, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Train ``net`` for ``steps`` Adam steps at ``lr`` through the `Trainer` in ``run_dir``
    (resuming its checkpoints when the folder already holds this run); the net is left
    trained (in eval mode) and the summary returned."""
    config = FoundationsConfig(out_dir=str(run_dir), method=json.loads(json.dumps(description)))
    o, t = config.optim, config.train
    o.lr, o.schedule, o.warmup_steps, o.weight_decay = lr, "constant", 0, 0.0
    o.beta2, o.grad_clip, o.fused = 0.999, 0.0, False
    t.max_steps, t.seed, t.device, t.batch_size = steps, seed, "cpu", 1
    t.eval_every, t.save_every, t.log_every = 0, save_every, 1
    config.log.progress, config.log.plot = progress, False
    model = SavedNet(net, description)
    trainer = Trainer(model, loader, config, objective=MeanLoss(loss_fn), run_dir=run_dir)
    summary = trainer.fit()
    net.eval()
    return summary
