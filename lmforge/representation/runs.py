"""Runs behind ``lmforge foundations cpc|margin``, each model trained through the one `Trainer`
(`lmforge.representation.trainer_runs`): progress bar, ``metrics.jsonl``, atomic checkpoints
and exact resume (run the same command again). A loss curve PNG, a figure (the margin losses'
feature angles) and ``report.json`` go into the output folder.

Layout: ``cpc`` trains the CPC model in ``out/`` (its ``checkpoints/``, ``metrics.jsonl``)
and the supervised reference in ``out/supervised/``; ``margin`` trains one network per loss in
``out/<loss>/`` and copies the best loss's ``metrics.jsonl`` to ``out/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.io import atomic_path, atomic_write_json, atomic_write_text
from lmforge.representation.cpc import (
    CPCModel,
    CPCSettings,
    cpc_loss,
    features_of,
    linear_probe_accuracy,
    synthetic_speakers,
)
from lmforge.representation.margin_softmax import MARGIN_LOSSES, cosines, margin_loss
from lmforge.representation.trainer_runs import PositionLoader, fit_net
from lmforge.representation.verification import (
    EmbeddingNet,
    synthetic_identities,
    verification_at_far,
)
from lmforge.train.metrics import METRICS_FILE, plot_training, read_metrics

__all__ = ["run_cpc", "run_margin", "SupervisedCPC"]


def write_curve(out: Path, records: list[dict[str, Any]], title: str) -> None:
    plot_training(records, out / "curves.png", title=title)


class SupervisedCPC(nn.Module):
    """g_enc + g_ar with a linear speaker head on c_T (the probe's supervised reference)."""

    def __init__(self, settings: CPCSettings, speakers: int = 8) -> None:
        super().__init__()
        self.cpc = CPCModel(settings)
        self.head = nn.Linear(settings.hidden, speakers)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return self.head(self.cpc(signal)[1][:, -1])


def speaker_batches(batch_size: int, seed: int) -> PositionLoader:
    """Batch i: ``synthetic_speakers`` drawn with seed ``seed · 100003 + i + 1``."""

    def make(i: int) -> dict[str, torch.Tensor]:
        signal, ids = synthetic_speakers(batch_size, seed=seed * 100_003 + i + 1)
        return {"signal": signal, "speaker": ids}

    return PositionLoader(make)


def build(seed: int, make: Any) -> Any:
    """``make()`` under ``torch.manual_seed(seed)`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def run_cpc(
    out: str | Path, context: str = "gru", steps: int = 150, seed: int = 0, probe_samples: int = 256,
    batch_size: int = 16, lr: float = 2e-3, save_every: int = 50, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """CPC on synthetic speakers; the report has the linear-probe accuracy of the CPC encoder,
    of a random one and of one trained with the labels, and the final InfoNCE MI bounds."""
    out = Path(out)
    settings = CPCSettings(context=context)
    tr_x, tr_y = synthetic_speakers(probe_samples, seed=1001)
    te_x, te_y = synthetic_speakers(probe_samples, seed=1002)
    rand = build(seed, lambda: CPCModel(settings))
    random_acc = linear_probe_accuracy(features_of(rand, tr_x), tr_y, features_of(rand, te_x), te_y)
    what = {"method": "cpc", "context": context, "batch_size": batch_size}
    model = build(seed, lambda: CPCModel(settings))
    fit_net(model, what, speaker_batches(batch_size, seed), lambda m, b: cpc_loss(m, b["signal"]),
            out, steps=steps, lr=lr, seed=seed, save_every=save_every, progress=progress)  # fmt: skip
    acc = linear_probe_accuracy(features_of(model, tr_x), tr_y, features_of(model, te_x), te_y)

    def supervised_loss(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return F.cross_entropy(net(batch["signal"]), batch["speaker"]), {}

    sup = build(seed, lambda: SupervisedCPC(settings))
    fit_net(sup, {**what, "method": "cpc-supervised"}, speaker_batches(batch_size, seed),
            supervised_loss, out / "supervised", steps=steps, lr=lr, seed=seed,
            save_every=save_every, progress=progress)  # fmt: skip
    sup_acc = linear_probe_accuracy(
        features_of(sup.cpc, tr_x), tr_y, features_of(sup.cpc, te_x), te_y
    )
    records = [r for r in read_metrics(out / METRICS_FILE) if "loss" in r]
    write_curve(out, records, f"CPC ({context}): InfoNCE")
    report = {"context": context, "steps": steps, "probe_acc": acc, "random_probe_acc": random_acc,
              "supervised_probe_acc": sup_acc,
              **{k: v for k, v in records[-1].items() if k.startswith("mi_bound")}}  # fmt: skip
    atomic_write_json(out / "report.json", report)
    return report


def run_margin(
    out: str | Path, losses: tuple[str, ...] = tuple(MARGIN_LOSSES), steps: int = 300,
    seed: int = 0, lr: float = 3e-3, identities: int = 40, save_every: int = 50,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Each margin loss trains an embedding (full batch of ``identities`` × 20 samples); the
    report has held-out verification accuracy and TAR at FAR = 1% per loss; ``angles.png``
    shows θ_y (feature vs own class weight)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    test_x, test_y = synthetic_identities(20, 20, seed=99)
    train_x, train_y = synthetic_identities(identities, 20, seed=seed)
    full_batch = PositionLoader(lambda i: {"x": train_x, "y": train_y})
    report: dict[str, Any] = {"steps": steps, "far": 0.01}
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in losses:
        net = build(seed, lambda: EmbeddingNet(train_x.shape[1], classes=identities))

        def loss_fn(m: nn.Module, b: dict, kind: str = kind) -> tuple[torch.Tensor, dict]:
            return margin_loss(kind, m(b["x"]), m.weights, b["y"])[1], {}

        what = {"method": "margin", "loss": kind, "identities": identities}
        fit_net(net, what, full_batch, loss_fn, out / kind, steps=steps, lr=lr, seed=seed,
                save_every=save_every, progress=progress)  # fmt: skip
        with torch.no_grad():
            acc, tar = verification_at_far(net(test_x), test_y, far=0.01)
            cos = cosines(net(train_x), net.weights).gather(1, train_y.view(-1, 1)).squeeze(1)
        report[kind] = {"verif_acc": acc, "tar_at_far": tar}
        angles = torch.rad2deg(torch.acos(cos.clamp(-1, 1))).numpy()
        ax.hist(angles, bins=40, range=(0, 90), histtype="step", label=kind)
    ax.set(xlabel="θ_y (degrees)", ylabel="training samples",
           title="angle between a feature and its class weight")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    with atomic_path(out / "angles.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    best = max(losses, key=lambda k: report[k]["verif_acc"])
    atomic_write_text(out / METRICS_FILE, (out / best / METRICS_FILE).read_text(encoding="utf-8"))
    write_curve(out, read_metrics(out / METRICS_FILE), f"{best}: training loss")
    report["best"] = best
    atomic_write_json(out / "report.json", report)
    return report
