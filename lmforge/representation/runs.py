"""Runs behind ``lmforge foundations cpc|margin``: train, write ``metrics.jsonl``, a loss
curve PNG, a figure (the margin losses' feature angles) and ``report.json`` into a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.io import atomic_path, atomic_write_json
from lmforge.representation.cpc import (
    CPCModel,
    CPCSettings,
    features_of,
    linear_probe_accuracy,
    synthetic_speakers,
    train_cpc,
    train_supervised,
)
from lmforge.representation.margin_softmax import MARGIN_LOSSES, cosines
from lmforge.representation.verification import (
    synthetic_identities,
    train_embedding,
    verification_at_far,
)
from lmforge.train.metrics import MetricsWriter, plot_training

__all__ = ["run_cpc", "run_margin"]


def write_curve(out: Path, losses: list[float], title: str) -> None:
    writer = MetricsWriter(out / "metrics.jsonl")
    records = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    for record in records:
        writer.write(record)
    writer.close()
    plot_training(records, out / "curves.png", title=title)


def run_cpc(
    out: str | Path, context: str = "gru", steps: int = 150, seed: int = 0, probe_samples: int = 256
) -> dict[str, Any]:
    """CPC on synthetic speakers; the report has the linear-probe accuracy of the CPC encoder,
    of a random one and of one trained with the labels, and the final InfoNCE MI bounds."""
    out = Path(out)
    settings = CPCSettings(context=context)
    tr_x, tr_y = synthetic_speakers(probe_samples, seed=1001)
    te_x, te_y = synthetic_speakers(probe_samples, seed=1002)
    torch.manual_seed(seed)
    rand = CPCModel(settings)
    random_acc = linear_probe_accuracy(features_of(rand, tr_x), tr_y, features_of(rand, te_x), te_y)
    model, history = train_cpc(settings, steps=steps, seed=seed)
    acc = linear_probe_accuracy(features_of(model, tr_x), tr_y, features_of(model, te_x), te_y)
    sup = train_supervised(settings, steps=steps, seed=seed)
    sup_acc = linear_probe_accuracy(features_of(sup, tr_x), tr_y, features_of(sup, te_x), te_y)
    write_curve(out, [h["loss"] for h in history], f"CPC ({context}): InfoNCE")
    report = {"context": context, "steps": steps, "probe_acc": acc, "random_probe_acc": random_acc,
              "supervised_probe_acc": sup_acc,
              **{k: v for k, v in history[-1].items() if k.startswith("mi_bound")}}  # fmt: skip
    atomic_write_json(out / "report.json", report)
    return report


def run_margin(
    out: str | Path, losses: tuple[str, ...] = tuple(MARGIN_LOSSES), steps: int = 300,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Each margin loss trains an embedding; the report has held-out verification accuracy
    and TAR at FAR = 1% per loss; ``angles.png`` shows θ_y (feature vs own class weight)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    test_x, test_y = synthetic_identities(20, 20, seed=99)
    train_x, train_y = synthetic_identities(40, 20, seed=seed)
    report: dict[str, Any] = {"steps": steps, "far": 0.01}
    curves = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in losses:
        net, curve = train_embedding(kind, steps=steps, seed=seed)
        curves[kind] = curve
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
    best = max(curves, key=lambda k: report[k]["verif_acc"])
    write_curve(out, curves[best], f"{best}: training loss")
    report["best"] = best
    atomic_write_json(out / "report.json", report)
    return report
