"""Run reporting: progress bar, metrics.jsonl, plot, summary, optional loggers."""

from __future__ import annotations

import importlib.util
import io
import json

import pytest
from rich.console import Console

from lmforge.train.loop import Trainer
from lmforge.train.metrics import (
    ExternalLoggers,
    MetricsWriter,
    format_summary,
    plot_training,
    read_metrics,
)


def test_progress_bar_shows_loss_lr_throughput_eta(toy_loader, make_model, make_config):
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=True)
    config = make_config(max_steps=3)
    config.log.progress = True
    Trainer(make_model(), toy_loader(), config, console=console).fit()
    text = out.getvalue()
    for part in ("training", "step 3", "loss ", "lr ", "tok/s", "eta"):
        assert part in text, part


def test_metrics_writer_drops_records_after_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    for step in range(1, 6):
        writer.write({"step": step, "loss": 1.0})
    writer.close()
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # torn line from a kill
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    writer = MetricsWriter(path, resume_step=3)
    writer.write({"step": 4, "loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(path)][-2:] == [(3, 1.0), (4, 0.5)]


def test_plot_and_summary(tmp_path):
    records = [{"step": i, "loss": 3 - 0.1 * i, "lr": 1e-3, "grad_norm": 1.0} for i in range(1, 9)]
    records.append({"step": 8, "val_loss": 2.5, "val_ppl": 12.2})
    path = plot_training(records, tmp_path / "training.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = {"stop_reason": "max_steps", "step": 8, "tokens": 12345, "elapsed_s": 2.0,
               "tokens_per_s": 6172.5, "loss": 2.2, "val_loss": 2.5, "val_ppl": 12.18,
               "plot": str(path)}  # fmt: skip
    text = format_summary(summary)
    assert "max_steps after 8 steps, 12,345 tokens" in text and "perplexity 12.18" in text
    json.dumps(summary)
    images = {**summary, "tokens": 0, "tokens_per_s": 0.0, "val_ppl": None}  # no tokens counted
    text = format_summary(images)
    assert "max_steps after 8 steps, 2.0 s" in text and "tokens" not in text
    assert "perplexity" not in text


@pytest.mark.parametrize(("flag", "package"), [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_optional_loggers_need_their_package(tmp_path, flag, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    kwargs = {"tensorboard": False, "wandb": False, flag: True}
    with pytest.raises(ValueError, match=f"log.{flag}=true needs the {package} package"):
        ExternalLoggers(tmp_path, project="x", config={}, **kwargs)
