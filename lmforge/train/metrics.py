"""What a run reports: a progress bar, ``metrics.jsonl``, ``training.png`` and a summary.

Each optimizer step appends one JSON object to ``metrics.jsonl`` (``step``, ``loss``, ``lr``,
``grad_norm``, ``tokens``, ``tokens_per_s``, ``elapsed_s``); each evaluation appends one with
``val_loss`` and ``val_ppl``. ``training.png`` plots loss (train and validation), learning
rate and gradient norm per step. TensorBoard and Weights & Biases receive the same scalars
when asked for and installed (neither is a dependency).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lmforge.io import atomic_path, atomic_write_text

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"


# ---------------------------------------------------------------------- jsonl
def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a ``metrics.jsonl`` (a torn last line from a kill is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsWriter:
    """Appends records to ``metrics.jsonl``; on resume drops records past the resumed step."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------- progress
class ProgressBar:
    """A rich progress bar over run progress (0 → 1) showing loss, lr, tokens/s and ETA."""

    def __init__(self, console: Console | None = None, enabled: bool = True, label="training"):
        self.enabled = enabled
        self.console = console or Console()
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(label, total=1.0, status="")

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, progress: float, record: dict[str, Any]) -> None:
        if self._progress is None:
            return
        status = (
            f"step {record['step']}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['tokens_per_s']:,.0f} tok/s"
        )
        self._progress.update(self._task, completed=min(max(progress, 0.0), 1.0), status=status)

    def print(self, text: str) -> None:
        """Print above the bar (or plainly when the bar is off)."""
        self.console.print(text, highlight=False)


# ---------------------------------------------------------------------- external loggers
class ExternalLoggers:
    """TensorBoard / W&B scalars; each must be installed when switched on."""

    def __init__(self, run_dir: Path, tensorboard: bool, wandb: bool, project: str, config):
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ValueError(
                    "log.tensorboard=true needs the tensorboard package (pip install tensorboard)"
                ) from exc
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as exc:
                raise ValueError(
                    "log.wandb=true needs the wandb package (pip install wandb)"
                ) from exc
            self._wandb = wandb_module.init(project=project, dir=str(run_dir), config=config)

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


# ---------------------------------------------------------------------- plot
def plot_training(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Save loss (train + validation), learning rate and gradient norm per step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss, ax_lr, ax_norm = axes
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if evals:
        steps, values = [r["step"] for r in evals], [r["val_loss"] for r in evals]
        ax_loss.plot(steps, values, "o-", label="validation")
    ax_loss.set(xlabel="step", ylabel="loss", title=title or "next-token loss")
    ax_loss.legend()
    with_lr = [r for r in train if "lr" in r]
    ax_lr.plot([r["step"] for r in with_lr], [r["lr"] for r in with_lr])
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    with_norm = [r for r in train if math.isfinite(r.get("grad_norm", float("nan")))]
    ax_norm.plot([r["step"] for r in with_norm], [r["grad_norm"] for r in with_norm])
    ax_norm.set(xlabel="step", ylabel="norm", title="gradient norm (before clipping)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- summary
def format_summary(summary: dict[str, Any]) -> str:
    """A few human lines from a run summary (see `lmforge.train.loop.Trainer.fit`)."""
    throughput = (  # runs that count no tokens (images, classic objectives) say only the time
        f"{summary['tokens']:,} tokens, {summary['elapsed_s']:.1f} s "
        f"({summary['tokens_per_s']:,.0f} tokens/s)"
        if summary.get("tokens")
        else f"{summary['elapsed_s']:.1f} s"
    )
    lines = [f"stopped: {summary['stop_reason']} after {summary['step']} steps, {throughput}"]
    if summary.get("note"):  # e.g. the time budget stopped the run short of its steps
        lines.append(f"note: {summary['note']}")
    if summary.get("loss") is not None:
        lines.append(f"final train loss {summary['loss']:.4f}")
    if summary.get("val_loss") is not None:
        ppl = summary.get("val_ppl")
        lines.append(
            f"validation loss {summary['val_loss']:.4f}"
            + (f" (perplexity {ppl:.2f})" if ppl is not None else "")
        )
    for key, label in (
        ("checkpoint", "checkpoint"),
        ("model_dir", "model"),
        ("metrics", "metrics"),
        ("plot", "plot"),
    ):
        if summary.get(key):
            lines.append(f"{label:<10} {summary[key]}")
    return "\n".join(lines)
