"""What every training entry point does around its `Trainer`: set up the process (CPU
threads, torch.distributed under torchrun, a console that is quiet off the main rank), find
the checkpoint it starts from and check its tokenizer fits, train and export ``model/``,
print the summary, and leave the process group.

    with training_run(config) as (dist, console):
        summary = fit_and_export(Trainer(model, data, config, dist=dist, console=console), run_dir)
        print_summary(summary, console)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.config import ConfigError
from lmforge.models.hf import checkpoint_dir
from lmforge.train import checkpoint as ckpt
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo, init_distributed
from lmforge.train.loop import Trainer
from lmforge.train.metrics import format_summary
from lmforge.train.resume_rules import BATCH_KEYS, check_resume, config_changes


def start_run(
    config: RunConfig, dist: DistInfo | None = None, console: Console | None = None
) -> tuple[DistInfo, Console]:
    """``dist`` and ``console``, made when not given: ``train.cpu_threads`` torch threads and
    the process group (under torchrun), and a console quiet on every rank but the first."""
    if dist is None:
        if config.train.cpu_threads:
            torch.set_num_threads(config.train.cpu_threads)
        dist = init_distributed(config.train.device)
    return dist, console or Console(quiet=not dist.is_main)


@contextmanager
def training_run(
    config: RunConfig, dist: DistInfo | None = None, console: Console | None = None
) -> Iterator[tuple[DistInfo, Console]]:
    """`start_run` for the block; when it set up the process itself (no ``dist`` given) it
    also leaves the process group at the end (`end_run`), whatever happens inside."""
    owns_dist = dist is None
    dist, console = start_run(config, dist, console)
    try:
        yield dist, console
    finally:
        if owns_dist:
            end_run(dist)


def init_model_dir(config: RunConfig, what: str) -> Path:
    """The checked ``model.init_from`` folder (``what`` names the run in the error)."""
    if not config.model.init_from:
        raise ConfigError(f"{what} needs a model to start from: model.init_from is empty")
    return checkpoint_dir(config.model.init_from)


def check_vocab(model_dir: str | Path, tokenizer: Any, vocab_size: int) -> None:
    """The tokenizer's ids must fit the model's embedding (``vocab_size`` rows)."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"{model_dir}: tokenizer has {tokenizer.vocab_size} ids but the model only {vocab_size}"
        )


def check_resumable(config: RunConfig) -> None:
    """Refuse early — before data is tokenized — to resume a run folder holding another run
    (`lmforge.train.resume_rules`; the `Trainer` checks again, fully, when it resumes)."""
    if config.train.resume is False:
        return
    path = ckpt.latest_checkpoint(Path(config.out_dir) / "checkpoints")
    if path is None:
        return
    try:
        saved = ckpt.read_trainer_state(path).get("config")
    except (OSError, ValueError):
        return  # a damaged checkpoint: the Trainer names it and falls back
    if saved is not None:  # (the global batch is compared by the Trainer, which knows the world)
        changes = config_changes(saved, config.to_dict())
        check_resume([c for c in changes if c.key not in BATCH_KEYS], config.train.resume, path)


def fit_and_export(trainer: Trainer, run_dir: str | Path) -> dict[str, Any]:
    """Train, then write the final model to ``run_dir/model``; the summary gets
    ``model_dir``."""
    summary = trainer.fit()
    summary["model_dir"] = str(trainer.export_model(Path(run_dir) / "model"))
    return summary


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The run's summary under a "summary" rule (`lmforge.train.metrics.format_summary`)."""
    console.rule("[bold]summary")
    console.print(format_summary(summary), highlight=False)


def end_run(dist: DistInfo) -> None:
    """Leave the process group (under torchrun)."""
    if dist.enabled:
        torch.distributed.destroy_process_group()
