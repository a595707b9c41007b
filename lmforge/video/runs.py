"""The run behind ``lmforge foundations oadtr``: OadTR and the GRU baseline trained on
synthetic streams through the one `Trainer` (`lmforge.representation.trainer_runs`: progress
bar, ``metrics.jsonl``, atomic checkpoints, exact resume when the same command runs again),
per-frame mAP on a held-out stream, a loss curve PNG and ``report.json``.

Layout: OadTR trains in ``out/`` (its ``checkpoints/``, ``metrics.jsonl``), the GRU baseline
in ``out/gru/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.io import atomic_write_json
from lmforge.representation.trainer_runs import PositionLoader, fit_net
from lmforge.train.metrics import METRICS_FILE, plot_training, read_metrics
from lmforge.video.oadtr import (
    GRUDetector,
    OadTR,
    OadTRSettings,
    frame_map,
    future_labels,
    sliding_windows,
    synthetic_stream,
)

__all__ = ["run_oadtr", "detector_loader"]


def detector_loader(
    kind: str, s: OadTRSettings, streams: int = 16, seed: int = 0, batch_size: int = 128
) -> PositionLoader:
    """OadTR: batch i is ``batch_size`` windows drawn with seed ``seed · 1000003 + i`` (with
    their current and future labels); GRU: every training stream, whole."""
    data = [synthetic_stream(256, s.feature_dim, s.num_classes, seed=seed * 1000 + i)
            for i in range(streams)]  # fmt: skip
    if kind != "oadtr":
        full = {"streams": torch.stack([x for x, _ in data]),
                "labels": torch.stack([y for _, y in data])}  # fmt: skip
        return PositionLoader(lambda i: full)
    windows = torch.cat([sliding_windows(x, s.window) for x, _ in data])
    current = torch.cat([y for _, y in data])
    future = torch.cat([future_labels(y, s.future) for _, y in data])

    def make(i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        idx = torch.randint(0, len(windows), (batch_size,), generator=g)
        return {"windows": windows[idx], "current": current[idx], "future": future[idx]}

    return PositionLoader(make)


def detector_loss(net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """OadTR's joint loss (eq. 10), or the GRU's per-chunk cross-entropy."""
    if "windows" in batch:
        return net.loss(batch["windows"], batch["current"], batch["future"]), {}
    logits = net(batch["streams"])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1)), {}


def run_oadtr(
    out: str | Path, steps: int = 200, seed: int = 0, lr: float = 3e-3, save_every: int = 50,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Per-frame mAP of OadTR and of the GRU baseline on a held-out 1024-chunk stream."""
    out = Path(out)
    s = OadTRSettings()
    x, y = synthetic_stream(1024, seed=999)
    report: dict[str, Any] = {"steps": steps}
    for kind in ("oadtr", "gru"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model: nn.Module = OadTR(s) if kind == "oadtr" else GRUDetector(s)
        fit_net(model, {"method": kind, **vars(s)}, detector_loader(kind, s, seed=seed),
                detector_loss, out if kind == "oadtr" else out / "gru", steps=steps, lr=lr,
                seed=seed, save_every=save_every, progress=progress)  # fmt: skip
        with torch.no_grad():
            scores = (
                model(sliding_windows(x, s.window))[0] if kind == "oadtr" else model(x[None])[0]
            )
        report[f"{kind}_map"] = frame_map(scores.softmax(-1), y)
    records = [r for r in read_metrics(out / METRICS_FILE) if "loss" in r]
    plot_training(records, out / "curves.png", title="OadTR: joint loss")
    atomic_write_json(out / "report.json", report)
    return report
